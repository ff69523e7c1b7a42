"""A hostile .pkl and a hostile .pth (each would create a file when unpickled) planted on every
path that reads a checkpoint: train_net.py's MODEL.WEIGHTS for training and --eval-only,
--resume (last_checkpoint naming the planted file), `retinanet-ext predict` and `export`.
Nothing is created, each run ends with one clear error line and exit status 2; a legitimate
Detectron2-format .pkl trains and evaluates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _checkpoint_helpers import (
    REPO_ROOT,
    build_tiny_model,
    load_tool,
    write_hostile_pkl,
    write_hostile_pth,
    write_model_zoo_pkl,
)

kill_soak = load_tool("kill_soak")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    kill_soak.prepare_data(str(folder))
    return folder


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


def train_net_args(data_dir: Path, output: Path, *extra: str, flag: str = "") -> list[str]:
    opts = kill_soak.tiny_training_opts(str(output), 2, period=1, keep=0)
    opts[opts.index("DATASETS.TRAIN") + 1] = "('shapes',)"
    opts[opts.index("DATASETS.TEST") + 1] = "('shapes',)"
    return [str(REPO_ROOT / "train_net.py"), "--config-file", str(kill_soak.QUICK_CONFIG),
            "--dataset", f"shapes=coco:{data_dir / 'train.json'}:{data_dir / 'train'}",
            *([flag] if flag else []), *opts,
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", *extra]


def plant(kind: str, folder: Path, sentinel: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "pkl":
        return write_hostile_pkl(folder / "model_final_280758.pkl", sentinel)
    return write_hostile_pth(folder / "model_final.pth", sentinel)


def command(path: str, data_dir: Path, tmp_path: Path, planted: Path) -> list[str]:
    output = tmp_path / "out"
    if path == "train":
        return train_net_args(data_dir, output, "MODEL.WEIGHTS", str(planted))
    if path == "eval-only":
        return train_net_args(data_dir, output, "MODEL.WEIGHTS", str(planted), flag="--eval-only")
    if path == "resume":
        (output / "last_checkpoint").write_text(planted.name)
        return train_net_args(data_dir, output, flag="--resume")
    quick = ["--config-file", str(kill_soak.QUICK_CONFIG), "MODEL.WEIGHTS", str(planted),
             "MODEL.RETINANET.NUM_CLASSES", "5", "MODEL.FPN.OUT_CHANNELS", "32"]
    if path == "predict":
        image = data_dir / "train" / "000000.png"
        return ["-m", "retinanet_ext", "predict", "--input", str(image),
                "--output", str(tmp_path / "pred"), *quick]
    return ["-m", "retinanet_ext", "export", "--format", "torchscript",
            "--output", str(tmp_path / "model.ts"), *quick]


@pytest.mark.parametrize("kind", ["pkl", "pth"])
@pytest.mark.parametrize("path", ["train", "eval-only", "resume", "predict", "export"])
def test_hostile_checkpoint_on_every_path(data_dir: Path, tmp_path: Path, path: str,
                                          kind: str) -> None:
    sentinel = tmp_path / "PWNED"
    planted = plant(kind, tmp_path / "out", sentinel)
    result = run(*command(path, data_dir, tmp_path, planted), cwd=tmp_path)
    assert not sentinel.exists()
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [line for line in errors if "is refused" in line] and len(errors) == 1, (
        result.stderr[-3000:])
    assert str(planted) in errors[0] and "posix.system" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "model.ts").exists() and not (tmp_path / "pred").exists()


def test_model_zoo_pkl_trains_and_evaluates(data_dir: Path, tmp_path: Path) -> None:
    weights = write_model_zoo_pkl(tmp_path / "model_final_abc.pkl", build_tiny_model(seed=3))
    trained = run(*train_net_args(data_dir, tmp_path / "out", "MODEL.WEIGHTS", str(weights)),
                  cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Reading a file from 'Detectron2 Model Zoo'" in trained.stderr + trained.stdout
    evaluated = run(*train_net_args(data_dir, tmp_path / "out", "MODEL.WEIGHTS",
                                    str(tmp_path / "out" / "model_final.pth"),
                                    flag="--eval-only"), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "Evaluation results for bbox" in evaluated.stderr + evaluated.stdout
