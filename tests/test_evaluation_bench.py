"""docs/benchmarks.md's COCO-evaluation benchmark command runs, on a tiny set: plumbing, not
speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retinanet_ext.evaluation import available_backends

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_coco_eval_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "coco_eval.md"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_coco_eval.py"),
         "--images", "60", "--classes", "5", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = out.read_text()
    assert "Machine:" in table and "pycocotools 2." in table and "60 images, 5 classes" in table
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [row["backend"] for row in rows] == ["pycocotools"] + [
        b for b in available_backends() if b != "pycocotools"]
    for row in rows:
        assert row["max_abs_difference"] <= 1e-4 and 0 < row["AP"] < 100
        assert f"| {row['backend']} | {row['seconds']:.2f} |" in table
