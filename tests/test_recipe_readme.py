"""The small-data recipe's commands (docs/recipe.md, docs/benchmarks.md), run as written (tiny
budgets appended): training with configs/recipes/small_data_R18_FPN.yaml (anchors chosen from
the data at start-up), then the precision-accuracy benchmark on the model it wrote (bf16, and
the ONNX float32/int8 runtimes)."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _docs_helpers import block_after
from test_cli_readme import TRAIN_TINY, localise

from retinanet_ext.engine import load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_TINY = ["INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "224"]


@pytest.mark.once
@pytest.mark.slow
def test_readme_recipe_and_precision_accuracy_commands(datasets_root: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "bccd"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    (train,) = block_after("recipe.md", "small_data_R18_FPN.yaml` is the small-data recipe")
    argv = shlex.split(localise(train, datasets_root, out))
    assert argv[:2] == ["python", "train_net.py"]
    result = subprocess.run([sys.executable, str(REPO_ROOT / argv[1]), *argv[2:], *TRAIN_TINY,
                             *TEST_TINY], capture_output=True, text=True, timeout=900,
                            cwd=REPO_ROOT, env=env)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    assert (out / "model_final.pth").is_file()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    # The anchors used are written out, chosen from the data (not the quick config's).
    assert saved["MODEL"]["RETINANET_EXT"]["ANCHORS_FROM_DATA"] is False
    quick = load_config(str(REPO_ROOT / "configs" / "retinanet_R18_FPN_quick.yaml"))
    assert saved["MODEL"]["ANCHOR_GENERATOR"]["SIZES"] != quick.MODEL.ANCHOR_GENERATOR.SIZES

    commands = block_after("benchmarks.md", "What bf16 and int8 cost a trained model")
    assert len(commands) == 3 and "--demo" in commands[0]  # the --demo one: test_benchmarks.py
    assert commands[1].startswith("R=")  # the BCCD run's folder: here, the one just trained
    argv = shlex.split(localise(commands[2].replace("$R", str(out)), datasets_root, out))
    report = tmp_path / "accuracy.md"
    argv[argv.index("--out") + 1] = str(report)
    runtimes = argv[argv.index("--runtimes") + 1].split(",")
    assert runtimes == ["onnx", "onnx-int8", "openvino", "openvino-int8"]
    if importlib.util.find_spec("openvino") is None:  # an optional extra
        runtimes = [r for r in runtimes if not r.startswith("openvino")]
    argv[argv.index("--runtimes") + 1] = ",".join(runtimes)
    # auto: bfloat16 where the CPU has it natively, float32 elsewhere (bfloat16 is refused there)
    argv = [sys.executable, str(REPO_ROOT / argv[2]), "--precisions", "float32,auto", *argv[3:]]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT,
                            env=env)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    results = json.loads(report.with_suffix(".json").read_text())["results"]
    assert set(results) == {"float32", "auto", *runtimes}
    assert "AP-Platelets" in results["float32"]["bbox"]
    # the float32 ONNX model evaluates exactly as PyTorch does; int8 gives its own figures
    assert results["onnx"]["bbox"]["AP"] == pytest.approx(results["float32"]["bbox"]["AP"],
                                                          abs=0.05)
    assert "AP-Platelets" in results["onnx-int8"]["bbox"]
