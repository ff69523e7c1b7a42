"""train_net.py's flag combinations: each works, or ends with one `error:` line (exit 2)
before anything runs or is written."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICK_CONFIG = str(REPO_ROOT / "configs" / "retinanet_R18_FPN_quick.yaml")
TINY = [
    "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "224", "DATALOADER.NUM_WORKERS", "0",
    "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
]


@pytest.fixture(scope="module")
def train_net():
    spec = importlib.util.spec_from_file_location("train_net", REPO_ROOT / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_train_net(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), *args],
        capture_output=True, text=True, timeout=900, cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--dataset", "x=coco:a.json:images"], "--dataset"),
        (["--eval-only"], "--eval-only"),
        (["--resume"], "--resume"),
        (["--check-data"], "--check-data"),
        (["--num-gpus", "2"], "--num-gpus"),
        (["--num-machines", "2"], "--num-machines"),
        (["--machine-rank", "1"], "--machine-rank"),
    ],
)
def test_demo_refuses_flags_it_would_ignore(train_net, capsys, tmp_path, monkeypatch, flags,
                                             named) -> None:
    monkeypatch.chdir(tmp_path)
    assert train_net.cli(["--demo", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --demo")
    assert named in err[0]
    assert list(tmp_path.iterdir()) == []  # nothing written (the demo writes output/demo)


@pytest.mark.parametrize("flag", ["--eval-only", "--resume"])
def test_check_data_refuses_eval_only_and_resume(train_net, capsys, tmp_path, monkeypatch,
                                                 flag) -> None:
    monkeypatch.chdir(tmp_path)
    assert train_net.cli(["--config-file", QUICK_CONFIG, "--check-data", flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --check-data validates the datasets and trains nothing; drop {flag}."]


def test_check_data_writes_nothing_and_prints_no_config(datasets_root: Path,
                                                        tmp_path: Path) -> None:
    root = datasets_root / "bccd" / "BCCD"
    out = tmp_path / "out"
    result = run_train_net(
        "--config-file", QUICK_CONFIG, "--check-data", "--num-gpus", "2",
        "--dataset", f"bccd_val=voc:{root}:val", "DATASETS.TRAIN", "()",
        "DATASETS.TEST", "('bccd_val',)", "OUTPUT_DIR", str(out), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Dataset 'bccd_val'" in result.stdout and "87 images" in result.stdout
    log = result.stdout + result.stderr
    assert "Running with full config" not in log and "Full config saved" not in log
    assert "launching" not in log  # validation runs once, in this process
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_eval_only_with_resume_evaluates_the_last_checkpoint(datasets_root: Path,
                                                             tmp_path: Path) -> None:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    import retinanet_ext  # noqa: F401
    from retinanet_ext.engine import load_config

    out = tmp_path / "out"
    model = build_model(load_config(QUICK_CONFIG))
    out.mkdir()
    DetectionCheckpointer(model, str(out)).save("model_0000004")  # and last_checkpoint
    ids = tmp_path / "val2.txt"
    val_ids = (datasets_root / "bccd" / "BCCD" / "ImageSets" / "Main" / "val.txt").read_text()
    ids.write_text("\n".join(val_ids.split()[:2]) + "\n")
    common = [
        "--config-file", QUICK_CONFIG, "--eval-only", "{resume}",
        "--dataset", f"bccd_val2=voc:{datasets_root / 'bccd' / 'BCCD'}:{ids}",
        *TINY, "DATASETS.TEST", "('bccd_val2',)", "OUTPUT_DIR", str(out), "MODEL.WEIGHTS", "",
    ]
    without_resume = run_train_net(*[a for a in common if a != "{resume}"], cwd=tmp_path)
    assert without_resume.returncode == 2
    assert "MODEL.WEIGHTS is empty" in without_resume.stderr

    resumed = run_train_net(*[a.replace("{resume}", "--resume") for a in common], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert str(out / "model_0000004.pth") in log
    assert "Evaluation results for bbox" in log
