"""The ``zero:`` config section, validated once, and the user's DeepSpeed JSON it may name.

Every key is the one core's HF Accelerate import maps ``deepspeed_config`` to
(``zero_stage`` -> ``stage``, ``zero3_init_flag`` -> ``zero3_init``...). An option
left at ``None`` is "not given": the DeepSpeed JSON's value, else the default, is
used. No torch or deepspeed import here.

Several models may each have their own DeepSpeed config (HF Accelerate's
``deepspeed_plugins``): ``plugins: {name: {stage: ..., config_file: ...}}`` names
them; the first is active, :meth:`ZeroOptions.select` activates another, and each
``prepare`` builds its engines from the active one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plait.config import backend_section
from plait.errors import ConfigError, closest

STAGES = (1, 2, 3)
OFFLOAD_DEVICES = ("none", "cpu", "nvme")
#: The stage used when neither the options nor the DeepSpeed JSON name one (HF Accelerate's default too).
DEFAULT_STAGE = 2


def _none_word(value: Any) -> Any:
    """HF Accelerate writes ``none`` (or leaves ``""``) for an unset path or device."""
    return None if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")) else value


@dataclass(frozen=True)
class ZeroOptions:
    """Options of the ``zero`` backend (DeepSpeed ZeRO).

    :param stage: 1 shards optimizer states, 2 also gradients, 3 also parameters
        (default: the DeepSpeed JSON's, else 2).
    :param offload_optimizer_device: ``"none"``, ``"cpu"`` or ``"nvme"``: where optimizer
        states (and the optimizer step) live.
    :param offload_param_device: ``"none"``, ``"cpu"`` or ``"nvme"``: where parameters
        rest between uses (stage 3 only).
    :param offload_optimizer_nvme_path: directory for ``nvme`` optimizer offload.
    :param offload_param_nvme_path: directory for ``nvme`` parameter offload.
    :param gradient_clipping: clip the gradient norm at this value in every step
        (default: no clipping, as with every other backend; DeepSpeed alone would clip at 1.0).
    :param zero3_init: build models under ``deepspeed.zero.Init`` (stage 3), see
        :func:`plait_zero.zero3_init`.
    :param save_16bit_model: DeepSpeed's ``stage3_gather_16bit_weights_on_model_save``.
    :param config_file: a DeepSpeed JSON file (or its contents as a dict); ``"auto"``
        values in it are filled from the Accelerator and the prepared dataloader.
    :param plugins: named configs for several models (HF Accelerate's ``deepspeed_plugins``):
        ``{name: {stage: 3, config_file: ...}}``, each entry complete in itself (the
        section's other keys stay unset). The first is active until :meth:`select`
        activates another; ``prepare`` builds each engine from the active one.
    """

    stage: int | None = None
    offload_optimizer_device: str | None = None
    offload_param_device: str | None = None
    offload_optimizer_nvme_path: str | None = None
    offload_param_nvme_path: str | None = None
    gradient_clipping: float | None = None
    zero3_init: bool = False
    save_16bit_model: bool = False
    config_file: str | Mapping[str, Any] | None = None
    plugins: Mapping[str, Mapping[str, Any] | ZeroOptions] | None = None
    #: The parsed DeepSpeed JSON (empty without ``config_file``); filled on creation.
    user_config: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    #: The active entry of ``plugins`` (one name, or none without plugins); changed by :meth:`select`.
    _selected: list[str] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def set_(name: str, value: Any) -> None:  # a frozen dataclass normalises its fields once
            object.__setattr__(self, name, value)

        stage = self.stage
        if isinstance(stage, str) and stage.strip().isdigit():
            stage = int(stage)
        if stage is not None and (isinstance(stage, bool) or stage not in STAGES):
            raise ConfigError(
                f"zero option stage={self.stage!r} is not valid: expected 1, 2 or 3 (1 shards optimizer states, "
                f"2 also gradients, 3 also parameters); set e.g. `zero: {{stage: 2}}` or --zero-stage 2"
            )
        set_("stage", stage)
        for kind in ("optimizer", "param"):
            device_key, path_key = f"offload_{kind}_device", f"offload_{kind}_nvme_path"
            raw = getattr(self, device_key)
            device = None if raw is None else (str(raw).strip().lower() or "none")
            if device is not None and device not in OFFLOAD_DEVICES:
                raise ConfigError(
                    f"zero option {device_key}={raw!r} is not valid: expected one of "
                    f"{', '.join(map(repr, OFFLOAD_DEVICES))}{closest(device, OFFLOAD_DEVICES)}"
                )
            path = _none_word(getattr(self, path_key))
            if device == "nvme" and path is None:
                raise ConfigError(
                    f"zero option {device_key}='nvme' needs {path_key}: the directory on a fast local NVMe disk "
                    f"to swap {'optimizer states' if kind == 'optimizer' else 'parameters'} to "
                    f"(or use {device_key}='cpu')"
                )
            set_(device_key, device)
            set_(path_key, None if path is None else str(path))
        clip = self.gradient_clipping
        if isinstance(clip, str) and clip.strip().lower() == "auto":
            clip = None
        if clip is not None:
            try:
                clip = float(clip)
            except (TypeError, ValueError):
                clip = -1.0
            if isinstance(self.gradient_clipping, bool) or not clip >= 0:
                raise ConfigError(
                    f"zero option gradient_clipping={self.gradient_clipping!r} is not valid: expected a number >= 0 "
                    f"(the largest gradient norm; 0 turns clipping off)"
                )
        set_("gradient_clipping", clip)
        for name in ("zero3_init", "save_16bit_model"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"zero option {name}={getattr(self, name)!r} is not valid: expected true or false")
        set_("config_file", _none_word(self.config_file) if not isinstance(self.config_file, Mapping) else self.config_file)
        set_("user_config", read_deepspeed_config(self.config_file))
        if self.offload_param_device not in (None, "none") and self.effective_stage != 3:
            raise ConfigError(
                f"zero option offload_param_device={self.offload_param_device!r} needs ZeRO stage 3 (this "
                f"configuration uses stage {self.effective_stage}): set stage: 3, or offload_param_device: none"
            )
        if self.zero3_init and self.effective_stage != 3:
            raise ConfigError(
                f"zero option zero3_init=true needs ZeRO stage 3 (this configuration uses stage "
                f"{self.effective_stage}): set stage: 3, or zero3_init: false"
            )
        if self.plugins is not None:
            set_("plugins", _read_plugins(self))
            self._selected.append(next(iter(self.plugins)))

    # ------------------------------------------------------------------ named configs (deepspeed_plugins)
    @property
    def plugin_names(self) -> tuple[str, ...]:
        """The names of ``plugins``, in order (empty without them)."""
        return tuple(self.plugins or ())

    @property
    def selected(self) -> str | None:
        """The active entry of ``plugins`` (HF Accelerate's selected ``DeepSpeedPlugin``), or ``None``."""
        return self._selected[-1] if self._selected else None

    def select(self, name: str) -> None:
        """Activate ``plugins[name]`` (HF Accelerate's ``select_deepspeed_plugin``): the next ``prepare`` and
        ``init_module`` use it; engines already built keep theirs."""
        if not self.plugins:
            raise ConfigError(
                f"Name the zero configs first (zero option plugins: {{{name!r}: {{stage: ...}}, ...}}) to select "
                f"{name!r}: this run has one DeepSpeed config and nothing to select"
            )
        if name not in self.plugins:
            names = list(self.plugins)
            raise ConfigError(
                f"Select one of the zero configs {', '.join(map(repr, names))}: there is no config named "
                f"{name!r}{closest(str(name), names)}"
            )
        self._selected[:] = [name]

    @property
    def active(self) -> ZeroOptions:
        """The options engines are built from now: the selected entry of ``plugins``, else these."""
        if self.plugins and self._selected:
            entry = self.plugins[self._selected[-1]]
            assert isinstance(entry, ZeroOptions)  # normalised in __post_init__
            return entry
        return self

    @property
    def effective_stage(self) -> int:
        """The stage that runs: this option, else the DeepSpeed JSON's, else 2 (the active entry's with ``plugins``)."""
        if self.plugins and self._selected:
            return self.active.effective_stage
        if self.stage is not None:
            return self.stage
        json_stage = self.user_config.get("zero_optimization", {}).get("stage", "auto")
        return DEFAULT_STAGE if json_stage == "auto" else int(json_stage)

    @classmethod
    def from_section(cls, options: Mapping[str, Any] | object) -> ZeroOptions:
        """Build from a config section (a mapping) or return a ``ZeroOptions`` given in code."""
        section = backend_section("zero", options, cls)
        if isinstance(section, ZeroOptions):
            return section
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        for key in section:
            if key not in names:
                raise ConfigError(
                    f"unknown zero option {key!r}{closest(str(key), names)}; valid options: {', '.join(names)}"
                )
        return cls(**dict(section))


def _read_plugins(options: ZeroOptions) -> dict[str, ZeroOptions]:
    """``plugins`` checked: a non-empty mapping of names to complete option sets, beside no other key."""
    plugins = options.plugins
    if not isinstance(plugins, Mapping) or not plugins:
        raise ConfigError(
            f"Give zero option plugins as a non-empty mapping of names to options, such as "
            f"plugins: {{student: {{stage: 2}}, teacher: {{stage: 3}}}}: got {plugins!r}"
        )
    defaults = ZeroOptions()
    given = [f.name for f in dataclasses.fields(ZeroOptions)
             if f.init and f.name != "plugins" and getattr(options, f.name) != getattr(defaults, f.name)]
    if given:
        raise ConfigError(
            f"Move zero option {', '.join(given)} into each entry of plugins (plugins: {{name: {{{given[0]}: ...}}}}): "
            f"with named configs each entry is complete, as HF Accelerate's deepspeed_plugins are, and the "
            f"section's own keys would apply to none of them"
        )
    entries: dict[str, ZeroOptions] = {}
    for name, entry in plugins.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"Name each zero config in plugins with a non-empty string: got {name!r}")
        nested = entry.get("plugins") if isinstance(entry, Mapping) else getattr(entry, "plugins", None)
        if nested:
            raise ConfigError(f"Remove plugins from the zero config {name!r}: named configs do not nest")
        if not isinstance(entry, (Mapping, ZeroOptions)):
            raise ConfigError(
                f"Give the zero config {name!r} as a mapping of zero options, such as {{stage: 3}}: got {entry!r}"
            )
        entries[name] = ZeroOptions.from_section(entry)
    return entries


def read_deepspeed_config(source: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The user's DeepSpeed config: a JSON file's contents, a dict's copy, or ``{}``."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        copied: dict[str, Any] = json.loads(json.dumps(dict(source)))  # a deep, JSON-clean copy
        return copied
    path = Path(str(source)).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"zero option config_file={str(source)!r} is not valid: no such file; give the path of a DeepSpeed "
            f"JSON config, or leave config_file out"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"zero option config_file={str(source)!r} is not valid JSON ({exc}): fix the file (DeepSpeed configs are "
            f"JSON objects)"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"zero option config_file={str(source)!r} holds a JSON {type(data).__name__}: expected an object "
            f"such as {{\"zero_optimization\": {{\"stage\": 2}}}}"
        )
    zero = data.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(f"DeepSpeed config {source}: zero_optimization={zero!r} is not valid: expected an object")
    stage = zero.get("stage", "auto")
    if stage != "auto" and (isinstance(stage, bool) or stage not in STAGES):
        raise ConfigError(
            f"DeepSpeed config {source}: zero_optimization.stage={stage!r} is not valid: expected 1, 2, 3 or \"auto\""
        )
    return data
