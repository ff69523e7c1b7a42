"""The kill soak, short: one round of training SIGKILLed 3 times (also inside checkpoint saves)
and resumed; training reaches MAX_ITER, iterations are continuous, every checkpoint loads.
The full soak (10 rounds) is `python tools/kill_soak.py`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _checkpoint_helpers import REPO_ROOT
from _docs_helpers import command_line


@pytest.mark.slow
def test_kill_soak_three_kills(tmp_path: Path) -> None:
    """docs/training.md's command (``python tools/kill_soak.py``) with a CI budget appended."""
    line = command_line("training.md", "python tools/kill_soak.py")
    result = subprocess.run(
        [sys.executable, *line.split("#")[0].split()[1:], "--rounds", "1", "--kills",
         "3", "--max-iter", "15", "--seed", "1", "--output", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=1200,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    found = re.search(r"round 0: 3 kills \((\d) during a save\).*: PASS", result.stdout)
    assert found and int(found.group(1)) >= 1, result.stdout
    assert "1/1 rounds passed" in result.stdout
    assert sorted(p.name for p in (tmp_path / "round_00").glob("model_final.pth"))
