"""From a checkout (this session installs plait editable), every install hint of the command line also gives the
command that works there: `pip install -c constraints.txt -e packages/<folder>`, run from the checkout's root.
The form of plait installed from wheels (the index's command alone) is tested in tests/packaging."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import plait

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_first_party_backend_names_both_commands_before_anything_starts(tmp_path):
    script = tmp_path / "never.py"
    script.write_text("raise SystemExit('started')\n")
    result = plait("launch", "--backend", "xla", str(script))

    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "backend 'xla' is not installed: pip install plait[xla] (installed backends: single, ddp" in message
    assert f"; from the checkout {ROOT}: pip install -c constraints.txt -e packages/xla" in message


def test_tpu_flags_name_the_xla_backend_and_both_commands(tmp_path):
    result = plait("launch", "--tpu", str(tmp_path / "never.py"))

    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert (f"--backend xla, installed by pip install plait[xla] (from the checkout {ROOT}: pip install -c "
            f"constraints.txt -e packages/xla)") in message

