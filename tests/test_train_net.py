"""End-to-end runs of train_net.py on tiny real inputs (a few iterations each)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICK_CONFIG = str(REPO_ROOT / "configs" / "retinanet_R18_FPN_quick.yaml")
# Small inputs and few iterations: these check the plumbing, not accuracy.
TINY = [
    "INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", "224",
    "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "224",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.BASE_LR", "0.001",  # no warm-up to speak of: keep the first steps finite
    # A model a few iterations old scores every anchor near the 0.01 prior, under the
    # default 0.05 threshold; keep them so NMS, top-k and the COCO table are exercised.
    "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
]


def train_net(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), *args],
        capture_output=True, text=True, timeout=900, cwd=cwd, env=env,
    )


def coco128_subset(datasets_root: Path, target: Path, num_images: int) -> tuple[str, str]:
    """A COCO JSON naming the first images of coco128 (the images stay where they are)."""
    source = datasets_root / "coco128" / "annotations" / "instances_train2017.json"
    data = json.loads(source.read_text())
    data["images"] = sorted(data["images"], key=lambda image: image["id"])[:num_images]
    kept = {image["id"] for image in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
    target.write_text(json.dumps(data))
    return str(target), str(datasets_root / "coco128" / "train2017")


def copypaste_values(log: str) -> list[float]:
    """The numbers of the last ``copypaste: AP,AP50,...`` block Detectron2 prints."""
    lines = [line.split("copypaste: ", 1)[1] for line in log.splitlines() if "copypaste: " in line]
    header = max(i for i, line in enumerate(lines) if line.startswith("AP,AP50"))
    return [float(v) for v in lines[header + 1].split(",")]


def check_detections(json_file: str, results_file: Path, ap: float) -> None:
    """The detections JSON is well formed for the dataset, and pycocotools computes from it
    the AP the evaluator reported."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ground_truth = COCO(json_file)
    results = json.loads(results_file.read_text())
    assert results, "no detections written"
    assert {r["image_id"] for r in results} <= set(ground_truth.getImgIds())
    assert {r["category_id"] for r in results} <= set(ground_truth.getCatIds())
    assert all(len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0 for r in results)
    assert all(0.0 <= r["score"] <= 1.0 for r in results)
    coco_eval = COCOeval(ground_truth, ground_truth.loadRes(str(results_file)), "bbox")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    assert coco_eval.stats[0] * 100 == pytest.approx(ap, abs=1e-3)


@pytest.mark.slow
def test_train_eval_only_and_resume_on_coco128(datasets_root: Path, tmp_path: Path) -> None:
    json_file, image_root = coco128_subset(datasets_root, tmp_path / "c8.json", 8)
    common = [
        "--config-file", QUICK_CONFIG, "--dataset", f"c8=coco:{json_file}:{image_root}",
        *TINY, "DATASETS.TRAIN", "('c8',)", "DATASETS.TEST", "('c8',)",
        "MODEL.RETINANET.NUM_CLASSES", "80", "OUTPUT_DIR", str(tmp_path / "out"),
        "SOLVER.CHECKPOINT_PERIOD", "2",
    ]
    trained = train_net(*common, "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "(2,)", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    out = tmp_path / "out"
    assert (out / "model_final.pth").is_file() and (out / "model_0000001.pth").is_file()
    assert "Evaluation results for bbox" in trained.stderr + trained.stdout
    after_training = copypaste_values(trained.stderr + trained.stdout)

    evaluated = train_net("--eval-only", *common, "MODEL.WEIGHTS", str(out / "model_final.pth"),
                          cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    log = evaluated.stderr + evaluated.stdout
    assert re.search(r"\|\s+AP\s+\|\s+AP50\s+\|\s+AP75\s+\|\s+APs\s+\|\s+APm\s+\|\s+APl\s+\|", log)
    assert "Per-category bbox AP" in log
    assert "Inference on c8: 8/8 images" in log  # progress display during inference
    # The checkpoint evaluates exactly as the model did at the end of training (it was
    # loaded, not left at a random init), and the numbers written are the ones printed.
    assert copypaste_values(log) == after_training
    metrics = json.loads((out / "eval_metrics.json").read_text())["bbox"]
    printed = dict(zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), after_training, strict=True))
    for key, value in printed.items():
        assert metrics[key] == pytest.approx(value, abs=1e-4, nan_ok=True), key
    results_file = out / "inference" / "c8" / "coco_instances_results.json"
    check_detections(json_file, results_file, metrics["AP"])

    resumed = train_net("--resume", *common, "SOLVER.MAX_ITER", "5", "SOLVER.STEPS", "(2,)",
                        "DATASETS.TEST", "()", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Starting training from iteration 3" in resumed.stderr + resumed.stdout
    assert (out / "model_0000003.pth").is_file()


@pytest.mark.slow
def test_train_on_bccd_voc(datasets_root: Path, tmp_path: Path) -> None:
    ids = tmp_path / "val4.txt"
    val_ids = (datasets_root / "bccd" / "BCCD" / "ImageSets" / "Main" / "val.txt").read_text()
    ids.write_text("\n".join(val_ids.split()[:4]) + "\n")
    root = datasets_root / "bccd" / "BCCD"
    result = train_net(
        "--config-file", QUICK_CONFIG,
        "--dataset", f"bccd_train=voc:{root}:train", "--dataset", f"bccd_val4=voc:{root}:{ids}",
        *TINY, "DATASETS.TEST", "('bccd_val4',)", "SOLVER.MAX_ITER", "2",
        "OUTPUT_DIR", str(tmp_path / "out"), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "model_final.pth").is_file()
    assert "Evaluation results for bbox" in result.stderr + result.stdout


@pytest.mark.slow
def test_train_on_csv_dataset_with_an_empty_image(datasets_root: Path, tmp_path: Path) -> None:
    images = datasets_root / "bccd" / "BCCD" / "JPEGImages"
    rows = [
        f"{images / 'BloodImage_00000.jpg'},68,315,286,480,WBC",
        f"{images / 'BloodImage_00000.jpg'},346,361,446,454,RBC",
        f"{images / 'BloodImage_00001.jpg'},1,244,82,360,Platelets",
        f"{images / 'BloodImage_00002.jpg'},,,,,",
    ]
    (tmp_path / "cells.csv").write_text("\n".join(rows) + "\n")
    result = train_net(
        "--config-file", QUICK_CONFIG, "--dataset", f"cells=csv:{tmp_path / 'cells.csv'}",
        *TINY, "DATASETS.TRAIN", "('cells',)", "DATASETS.TEST", "()",
        "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False", "SOLVER.MAX_ITER", "2",
        "OUTPUT_DIR", str(tmp_path / "out"), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "model_final.pth").is_file()


@pytest.mark.slow
def test_two_cpu_processes_train_over_gloo(datasets_root: Path, tmp_path: Path) -> None:
    root = datasets_root / "bccd" / "BCCD"
    result = train_net(
        "--config-file", QUICK_CONFIG, "--num-gpus", "2",
        "--dataset", f"bccd_train=voc:{root}:train",
        *TINY, "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "2",
        "OUTPUT_DIR", str(tmp_path / "out"), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr + result.stdout
    assert "launching 2 CPU processes per machine over gloo" in log
    assert (tmp_path / "out" / "log.txt.rank1").is_file()  # the second process logged
    assert (tmp_path / "out" / "model_final.pth").is_file()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"], ids=["empty", "garbage"])
def test_eval_only_with_a_corrupt_checkpoint_names_the_file(
    datasets_root: Path, tmp_path: Path, content: bytes
) -> None:
    checkpoint = tmp_path / "broken.pth"
    checkpoint.write_bytes(content)
    root = datasets_root / "bccd" / "BCCD"
    result = train_net(
        "--config-file", QUICK_CONFIG, "--dataset", f"bccd_val=voc:{root}:val", "--eval-only",
        "MODEL.WEIGHTS", str(checkpoint), "OUTPUT_DIR", str(tmp_path / "out"), cwd=tmp_path,
    )
    assert result.returncode == 2
    assert f"checkpoint {checkpoint} could not be read" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_only_with_a_missing_checkpoint(datasets_root: Path, tmp_path: Path) -> None:
    root = datasets_root / "bccd" / "BCCD"
    result = train_net(
        "--config-file", QUICK_CONFIG, "--dataset", f"bccd_val=voc:{root}:val", "--eval-only",
        "MODEL.WEIGHTS", str(tmp_path / "nope.pth"), "OUTPUT_DIR", str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert f"checkpoint {tmp_path / 'nope.pth'} does not exist" in result.stderr


def test_num_classes_mismatch_fails_at_start(datasets_root: Path, tmp_path: Path) -> None:
    root = datasets_root / "bccd" / "BCCD"
    result = train_net(
        "--config-file", QUICK_CONFIG, "--dataset", f"bccd_train=voc:{root}:train",
        "DATASETS.TEST", "()", "MODEL.RETINANET.NUM_CLASSES", "5",
        "OUTPUT_DIR", str(tmp_path / "out"), cwd=tmp_path,
    )
    assert result.returncode == 2
    assert re.search(r"^error: MODEL\.RETINANET\.NUM_CLASSES is 5, but dataset\(s\) 'bccd_train' "
                     r"have 3 classes: .*Set MODEL\.RETINANET\.NUM_CLASSES 3 ",
                     result.stderr, re.MULTILINE), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_check_data_prints_the_summary_without_training(
    datasets_root: Path, tmp_path: Path
) -> None:
    root = datasets_root / "bccd" / "BCCD"
    result = train_net(
        "--config-file", QUICK_CONFIG, "--check-data",
        "--dataset", f"bccd_train=voc:{root}:train", "--dataset", f"bccd_val=voc:{root}:val",
        "OUTPUT_DIR", str(tmp_path / "out"), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "bccd_train" in log and "bccd_val" in log
    assert "BloodImage_00343.xml" in log  # the zero-area box of the train split
    assert not (tmp_path / "out" / "model_final.pth").exists()
