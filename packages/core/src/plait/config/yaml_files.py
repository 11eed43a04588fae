"""Reading config YAML files, ours or HF Accelerate's, with errors that name the file, line and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plait.errors import ConfigError, closest


def _key_lines(path: Path, text: str) -> dict[tuple[str, ...], int]:
    """Map ``(key,)`` and ``(section, key)`` to their 1-based line numbers."""
    import yaml

    lines: dict[tuple[str, ...], int] = {}
    node = yaml.compose(text)
    if not isinstance(node, yaml.MappingNode):
        return lines
    for key_node, value_node in node.value:
        lines[(key_node.value,)] = key_node.start_mark.line + 1
        if isinstance(value_node, yaml.MappingNode):
            for sub_key, _ in value_node.value:
                lines[(key_node.value, sub_key.value)] = sub_key.start_mark.line + 1
    return lines


def parse_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """Parse ``path`` into a mapping and its key line numbers; a syntax error names file and line."""
    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        lines = _key_lines(path, text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {where}: malformed YAML ({problem}); fix the file or run `plait config`") from None
    if data is None:
        return {}, lines
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys to values, found {type(data).__name__}")
    return data, lines


def load_config_file(path: Path, sections: tuple[str, ...], where: dict[str, str] | None = None) -> dict[str, Any]:
    """Read a config file (ours, or HF Accelerate's ``default_config.yaml``) into config values.

    :param where: filled with ``"config file <path>, line <n>"`` for each top-level key read.
    """
    from plait.config.accelerate_files import from_accelerate, is_accelerate_config, source_key
    from plait.config.settings import KEYS, coerce

    data, lines = parse_yaml(path)
    accelerate = is_accelerate_config(data)
    if accelerate:
        data = from_accelerate(data, path)
    values: dict[str, Any] = {}
    found_sections: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        line = lines.get((source_key(key) if accelerate else key,), "?")
        origin = f"config file {path}, line {line}"
        if key in KEYS:
            values[key] = coerce(key, value, origin)
            if where is not None:
                where[key] = origin
        elif key in sections:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: section {key!r} must be a mapping of options, found {value!r}")
            found_sections[key] = value
        else:
            raise ConfigError(
                f"{origin}: unknown key {key!r}{closest(str(key), KEYS + sections)}; "
                f"valid keys are {', '.join(KEYS)} and the backend sections {', '.join(sections)}"
            )
    if found_sections:
        values["sections"] = found_sections
    return values


def write_config_file(path: Path, data: dict[str, Any], header: str = "") -> None:
    """Write ``data`` as a YAML config file, atomically (an interrupted write leaves the old file whole)."""
    import yaml

    from plait.atomic_files import atomic_write

    text = header + yaml.safe_dump(data, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
