"""The tree stays ruff-clean (pyproject.toml's rules), as the style guide asks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:  # requirements/test.txt installs it: missing is a failure, not a skip
        pytest.fail(f"ruff is not installed beside {sys.executable} (requirements/test.txt has it)")
    result = subprocess.run(
        [ruff, "check", "retinanet_ext", "tests", "benchmarks", "tools", "train_net.py",
         "setup.py"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
