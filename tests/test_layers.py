"""The layers of docs/architecture.md hold: import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold() -> None:
    # lint-imports is in requirements/test.txt; beside this interpreter in the venv.
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    kept = [line for line in result.stdout.splitlines() if line.endswith(" KEPT")]
    assert len(kept) >= 3, result.stdout  # library/application, layers, no cycles
