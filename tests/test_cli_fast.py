"""``retinanet-ext --help`` is fast: building the parser and printing any help imports neither
``retinanet_ext`` (whose import registers the model components) nor torch, Detectron2, cv2 or
numpy; those come inside the command that runs. Each check is a fresh interpreter, since this
one has imported all of them already (conftest). What the interpreter imports at start-up (the
set-up's compat-bridges hook, a .pth file that loads ``retinanet_ext.compat`` alone) is not
--help's doing; it is checked apart: it must not import the heavy modules either."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import retinanet_ext_cli

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Top-level modules that --help must not import (seconds each, together).
HEAVY = ("retinanet_ext", "torch", "torchvision", "detectron2", "cv2", "numpy", "matplotlib")

#: Run in a fresh interpreter: every --help, then which HEAVY modules each one left imported.
HELP_IMPORTS = f"""
import sys

at_startup = set(sys.modules)

import io, json
from contextlib import redirect_stdout

import retinanet_ext_cli

heavy = {HEAVY!r}
parser = retinanet_ext_cli.build_parser()
found = {{}}
for argv in [["--help"]] + [[name, "--help"] for name in retinanet_ext_cli.COMMANDS]:
    with redirect_stdout(io.StringIO()) as text:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pass
    assert "usage: retinanet-ext" in text.getvalue(), (argv, text.getvalue())
    found[" ".join(argv)] = sorted(m for m in set(sys.modules) - at_startup
                                   if m.split(".")[0] in heavy)
startup = sorted(m for m in at_startup if m.split(".")[0] in heavy)
print(json.dumps({{"startup": startup, "help": found}}))
"""


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def test_help_imports_no_heavy_module() -> None:
    result = _run([sys.executable, "-c", HELP_IMPORTS])
    assert result.returncode == 0, result.stderr[-3000:]
    imported = json.loads(result.stdout)
    found = imported["help"]
    assert list(found) == ["--help"] + [f"{name} --help" for name in retinanet_ext_cli.COMMANDS]
    assert found == {argv: [] for argv in found}, "--help imported heavy modules"
    assert set(imported["startup"]) <= {"retinanet_ext.compat"}, (
        "the interpreter's start-up (a .pth file in site-packages) imported heavy modules")


@pytest.mark.parametrize("argv", [[], ["predict"], ["sweep"]], ids=["top", "predict", "sweep"])
def test_console_script_help(argv: list[str]) -> None:
    tool = Path(sys.executable).parent / "retinanet-ext"
    assert tool.is_file(), f"no console script at {tool}: pip install --no-deps -e ."
    result = _run([str(tool), *argv, "--help"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"usage: retinanet-ext {' '.join(argv)}".rstrip())
    if not argv:
        assert all(name in result.stdout for name in retinanet_ext_cli.COMMANDS)


def test_python_m_retinanet_ext_cli_help() -> None:
    result = _run([sys.executable, "-m", "retinanet_ext_cli", "--help"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "predict" in result.stdout


def test_main_applies_the_compat_bridges_once_before_the_command(monkeypatch) -> None:
    from retinanet_ext import compat
    from retinanet_ext_cli import plot

    calls: list[str] = []
    monkeypatch.setattr(compat, "apply", lambda: calls.append("apply"))
    monkeypatch.setattr(plot, "run", lambda args: calls.append("run") or 0)
    assert retinanet_ext_cli.main(["plot", "output/run"]) == 0
    assert calls == ["apply", "run"]


@pytest.mark.once
@pytest.mark.slow
def test_bench_cli_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "cli_help.md"
    result = _run([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_cli.py"),
                   "--repeats", "1", "--out", str(out)])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    table = out.read_text()
    assert "| `retinanet-ext --help` |" in table and "| `retinanet-ext predict --help` |" in table
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [len(row["runs"]) for row in rows] == [1] * len(rows)
    assert all(row["median_s"] > 0 for row in rows)
