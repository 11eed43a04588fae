"""plait.utils.imports: real checks of libraries (module and distribution), torch's devices, and the
hardware plait does not run on reported absent; importing the module imports nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plait.utils import _MODULES as TABLE
from plait.utils import imports


def test_every_is_available_name_of_the_table_answers_a_bool():
    names = TABLE["plait.utils.imports"]
    assert len(names) == 41
    for name in names:
        assert isinstance(getattr(imports, name)(), bool), name


def test_libraries_are_found_by_module_and_distribution():
    assert imports.is_safetensors_available() and imports.is_numpy_available()
    assert imports.is_pytest_available()
    assert imports.is_numpy_available("1.0") and not imports.is_numpy_available("999.0")
    assert imports.is_deepspeed_available() == (imports._is_package_available("deepspeed"))
    assert not imports.is_bnb_available() or imports.is_bnb_available("0.0.1")


def test_a_folder_of_the_same_name_is_not_the_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "__init__.py").write_text("")
    (tmp_path / "plait_fakelib").mkdir()
    (tmp_path / "plait_fakelib" / "__init__.py").write_text("")
    info = tmp_path / "plait_fakelib-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plait_fakelib\nVersion: 1.2.3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    had_timm = imports._is_package_available("timm")
    assert imports._is_package_available("plait_fakelib")
    assert imports._distribution_at_least("plait_fakelib", "1.2") and not imports._distribution_at_least(
        "plait_fakelib", "1.2.4")
    if not had_timm:  # (a real timm installation would be found, rightly)
        assert not imports.is_timm_available()
    assert not imports._is_package_available("plait_no_such_module")


def test_devices_are_torch_s_answers():
    assert imports.is_cuda_available() == torch.cuda.is_available()
    assert imports.is_mps_available() == (torch.backends.mps.is_available() and torch.backends.mps.is_built())
    if not torch.cuda.is_available() and not imports.is_mps_available() and not imports.is_torch_xla_available():
        assert imports.is_bf16_available()  # on the CPU
    elif torch.cuda.is_available():
        assert imports.is_bf16_available() == torch.cuda.is_bf16_supported()
    assert imports.is_fp16_available()
    assert imports.is_weights_only_available()  # plait needs torch 2.4


def test_what_plait_does_not_run_on_is_reported_absent():
    for name in ("is_fp8_available", "is_npu_available", "is_xpu_available", "is_mlu_available",
                 "is_hpu_available", "is_musa_available", "is_sdaa_available"):
        assert getattr(imports, name)() is False, name


def test_xla_can_be_turned_off_and_rich_needs_its_flag(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("USE_TORCH_XLA", "0")
    assert not imports.is_torch_xla_available()
    with pytest.raises(ValueError, match="pass at most one"):
        imports.is_torch_xla_available(check_is_tpu=True, check_is_gpu=True)
    monkeypatch.delenv("ACCELERATE_ENABLE_RICH", raising=False)
    assert not imports.is_rich_available()
    monkeypatch.setenv("ACCELERATE_ENABLE_RICH", "1")
    assert imports.is_rich_available() == imports._is_package_available("rich")


def test_versions_compare_by_release_numbers():
    assert imports._at_least("2.4.1+cu121", "2.4") and imports._at_least("2.10.0", "2.9.1")
    assert not imports._at_least("1.24.4", "1.25.0")
    with pytest.raises(ValueError, match="version 'abc' is not valid"):
        imports._version("abc")


def test_importing_it_and_checking_libraries_imports_neither_torch_nor_the_libraries():
    code = ("import sys, json; import plait.utils.imports as i; i.is_deepspeed_available(); i.is_wandb_available(); "
            "print(json.dumps([m for m in ('torch', 'deepspeed', 'wandb') if m in sys.modules]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(result.stdout) == []
