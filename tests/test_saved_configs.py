"""Every config the project writes loads everywhere: the ``OUTPUT_DIR/config.yaml`` of a
training run (the demo; the small-data recipe, whose anchors are chosen at start-up) drives
``retinanet-ext predict``, ``retinanet-ext export`` and ``train_net.py --eval-only`` as it is.
Their ``PRECISION auto`` is channels-last on a CPU with native bf16, which export handles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from retinanet_ext import Predictor
from retinanet_ext.export import ExportedModel, export_model
from tests._predict_helpers import QUICK_CONFIG, TINY_OPTS, sample_rgb, write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE = REPO_ROOT / "configs" / "recipes" / "small_data_R18_FPN.yaml"
# A few steps on small inputs: these check that the saved config loads and runs, not accuracy.
TINY = ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "()", "SOLVER.BASE_LR", "0.001", "DATALOADER.NUM_WORKERS", "0"]


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                            timeout=900, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, (argv, result.stdout[-2000:], result.stderr[-3000:])
    return result


def _use_saved_config(out: Path, images: list[str], datasets: list[str], tmp_path: Path) -> None:
    """predict, export and --eval-only, each with ``out/config.yaml`` and its model."""
    config = out / "config.yaml"
    weights = ["MODEL.WEIGHTS", str(out / "model_final.pth")]
    predicted = tmp_path / "predicted"
    # A model two steps old scores under the default threshold: keep what it finds.
    _run("-m", "retinanet_ext", "predict", "--config-file", str(config), *weights,
         "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "--input", *images,
         "--output", str(predicted), "--no-draw", cwd=tmp_path)
    assert len(json.loads((predicted / "summary.json").read_text())["images"]) == len(images)
    _run("-m", "retinanet_ext", "export", "--format", "onnx", "--config-file", str(config),
         *weights, "--output", str(tmp_path / "model.onnx"), cwd=tmp_path)
    assert (tmp_path / "model.onnx").is_file()
    _run(str(REPO_ROOT / "train_net.py"), "--eval-only", "--config-file", str(config),
         *datasets, *weights, "OUTPUT_DIR", str(tmp_path / "eval"), cwd=tmp_path)
    assert "bbox" in json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())


def test_export_of_a_channels_last_model(tmp_path: Path) -> None:
    # The demo's and the recipe's PRECISION auto is channels-last on a CPU with native bf16
    # (CHANNELS_LAST True here, on any CPU): the export is float32 in the default layout, and
    # the predictor keeps its own.
    predictor = Predictor(QUICK_CONFIG, str(write_tiny_checkpoint(tmp_path / "tiny.pth")),
                          opts=[*TINY_OPTS, "MODEL.RETINANET_EXT.CHANNELS_LAST", "True"])
    path = export_model(predictor, tmp_path / "tiny.onnx", "onnx")
    conv = predictor.model.backbone.bottom_up.stem.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    image = sample_rgb(200, 300)
    ours, theirs = predictor(image), ExportedModel(path)(image)
    assert len(ours.boxes) == len(theirs.boxes) > 0


@pytest.mark.slow
def test_the_demos_saved_config_loads_in_every_tool(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    _run(str(REPO_ROOT / "train_net.py"), "--demo", *TINY, "DEMO.NUM_TRAIN", "4",
         "DEMO.NUM_VAL", "2", "DEMO.NUM_VIS_IMAGES", "1", "DEMO.VIS_SCORE_THRESH", "0.0",
         "OUTPUT_DIR", str(out), cwd=tmp_path)
    assert "DEMO" in yaml.safe_load((out / "config.yaml").read_text())
    data = out / "synthetic_data"
    # the demo registers its data itself; the other tools are told where it is
    datasets = ["--dataset", f"retinanet_ext_synthetic_val=coco:{data / 'val.json'}:{data / 'val'}"]
    _use_saved_config(out, sorted(str(path) for path in (data / "val").iterdir()), datasets,
                      tmp_path)


@pytest.mark.slow
def test_the_recipes_saved_config_loads_in_every_tool(datasets_root: Path,
                                                      tmp_path: Path) -> None:
    root = datasets_root / "bccd" / "BCCD"
    ids = (root / "ImageSets" / "Main" / "train.txt").read_text().split()
    (tmp_path / "train8.txt").write_text("\n".join(ids[:8]) + "\n")
    (tmp_path / "val2.txt").write_text("\n".join(ids[8:10]) + "\n")
    datasets = ["--dataset", f"bccd_train8=voc:{root}:{tmp_path / 'train8.txt'}",
                "--dataset", f"bccd_val2=voc:{root}:{tmp_path / 'val2.txt'}"]
    out = tmp_path / "recipe"
    _run(str(REPO_ROOT / "train_net.py"), "--config-file", str(RECIPE), *datasets, *TINY,
         "MODEL.RETINANET.NUM_CLASSES", "3", "DATASETS.TRAIN", "('bccd_train8',)",
         "DATASETS.TEST", "('bccd_val2',)", "INPUT.MIN_SIZE_TRAIN", "(160,)",
         "INPUT.MAX_SIZE_TRAIN", "224", "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST",
         "224", "OUTPUT_DIR", str(out), cwd=tmp_path)
    # the anchors chosen at start-up are in the saved config, which builds a model as it is
    assert yaml.safe_load((out / "config.yaml").read_text())["MODEL"]["RETINANET_EXT"][
        "ANCHORS_FROM_DATA"] is False
    images = [str(root / "JPEGImages" / f"{name}.jpg") for name in ids[8:10]]
    _use_saved_config(out, images, datasets[2:], tmp_path)
