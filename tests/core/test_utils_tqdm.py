"""plait.utils.tqdm: shown by the local main process only, on 2 real processes; a clear error without tqdm."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from plait.testing import run_processes


def bars_worker() -> dict[str, Any]:
    from plait.state import PartialState
    from plait.utils import tqdm

    state = PartialState(cpu=True)
    default = tqdm(range(3))
    everywhere = tqdm(range(3), main_process_only=False)
    forced_off = tqdm(range(3), disable=True, main_process_only=False)
    out = {"local_index": state.local_process_index, "default": default.disable,
           "everywhere": everywhere.disable, "forced_off": forced_off.disable, "total": default.total,
           "items": list(default)}
    for bar in (default, everywhere, forced_off):
        bar.close()
    return out


def test_only_local_rank_0_shows_the_bar_on_two_processes():
    pytest.importorskip("tqdm")
    rank0, rank1 = run_processes(bars_worker, 2)
    assert (rank0["local_index"], rank1["local_index"]) == (0, 1)
    assert (rank0["default"], rank1["default"]) == (False, True)
    assert (rank0["everywhere"], rank1["everywhere"]) == (False, False)
    assert rank0["forced_off"] is True and rank1["forced_off"] is True
    assert rank0["total"] == rank1["total"] == 3 and rank0["items"] == rank1["items"] == [0, 1, 2]


def test_main_process_only_as_the_first_argument_is_refused_as_accelerate_does():
    pytest.importorskip("tqdm")
    from plait.utils import tqdm

    with pytest.raises(ValueError, match=r"pass it by name: tqdm\(iterable, main_process_only=True\)"):
        tqdm(True, range(3))


def test_without_tqdm_an_import_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch):
    from plait.utils import tqdm

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tqdm" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install tqdm"):
        tqdm(range(3))
