"""The synthetic data set (fast) and the end-to-end demo (slow)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

import retinanet_ext  # noqa: F401  (registers the components)
from retinanet_ext.data import synthetic
from retinanet_ext.modeling.precision import cpu_bf16_flags

REPO_ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(num_train=12, num_val=4, image_size=96, seed=3)


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic"))
    info = synthetic.generate_synthetic_dataset(out, **SMALL)
    return out, info


def test_layout_and_counts(small_dataset):
    out, info = small_dataset
    assert not info["reused"]
    for split, n in (("train", SMALL["num_train"]), ("val", SMALL["num_val"])):
        coco = _load(os.path.join(out, f"{split}.json"))
        assert len(coco["images"]) == n
        assert len(os.listdir(os.path.join(out, split))) == n
        assert [c["name"] for c in coco["categories"]] == list(synthetic.CLASS_NAMES)
        num_classes = len(synthetic.CLASS_NAMES)
        assert {c["id"] for c in coco["categories"]} == set(range(1, num_classes + 1))
        assert info["splits"][split]["num_annotations"] == len(coco["annotations"])
        # many objects per image
        assert len(coco["annotations"]) >= 4 * n


def test_deterministic(small_dataset, tmp_path):
    out, _ = small_dataset
    synthetic.generate_synthetic_dataset(str(tmp_path), **SMALL)
    for split in ("train", "val"):
        assert _load(os.path.join(out, f"{split}.json")) == _load(
            os.path.join(tmp_path, f"{split}.json")
        )
        for name in sorted(os.listdir(os.path.join(out, split)))[:3]:
            with open(os.path.join(out, split, name), "rb") as a, open(
                os.path.join(tmp_path, split, name), "rb"
            ) as b:
                assert a.read() == b.read()


def test_seed_changes_data(small_dataset, tmp_path):
    out, _ = small_dataset
    synthetic.generate_synthetic_dataset(str(tmp_path), **{**SMALL, "seed": SMALL["seed"] + 1})
    assert _load(os.path.join(out, "train.json"))["annotations"] != _load(
        os.path.join(tmp_path, "train.json")
    )["annotations"]


def test_image_independent_of_split_size(small_dataset, tmp_path):
    """Image i of a split does not depend on how many images were generated."""
    out, _ = small_dataset
    synthetic.generate_synthetic_dataset(str(tmp_path), **{**SMALL, "num_train": 5})
    big = [a for a in _load(os.path.join(out, "train.json"))["annotations"] if a["image_id"] <= 5]
    small = _load(os.path.join(tmp_path, "train.json"))["annotations"]
    assert big == small


def test_class_imbalance(tmp_path):
    info = synthetic.generate_synthetic_dataset(str(tmp_path), num_train=60, num_val=1,
                                                image_size=128, seed=0)
    counts = info["class_counts"]["train"]
    assert set(counts) == set(synthetic.CLASS_NAMES)
    total = sum(counts.values())
    fractions = sorted((c / total for c in counts.values()), reverse=True)
    assert all(c > 0 for c in counts.values())
    assert fractions[0] > 0.4  # one dominant class
    assert fractions[-1] < 0.1  # a rare one
    assert fractions[0] / fractions[-1] > 5


def test_boxes_inside_images(small_dataset):
    out, _ = small_dataset
    for split in ("train", "val"):
        coco = _load(os.path.join(out, f"{split}.json"))
        sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            width, height = sizes[ann["image_id"]]
            assert w > 0 and h > 0
            assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
            assert ann["area"] == pytest.approx(w * h)
            assert ann["iscrowd"] == 0


def test_images_match_json(small_dataset):
    import cv2

    out, _ = small_dataset
    coco = _load(os.path.join(out, "val.json"))
    for im in coco["images"]:
        img = cv2.imread(os.path.join(out, "val", im["file_name"]))
        assert img is not None and img.shape == (im["height"], im["width"], 3)


def test_pycocotools_loads(small_dataset):
    import contextlib
    import io

    from pycocotools.coco import COCO

    out, _ = small_dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(os.path.join(out, "val.json"))
    assert len(coco.getImgIds()) == SMALL["num_val"]
    assert len(coco.getCatIds()) == len(synthetic.CLASS_NAMES)
    assert len(coco.getAnnIds()) > 0


def test_idempotent(small_dataset):
    out, _ = small_dataset
    json_file = os.path.join(out, "train.json")
    mtime = os.stat(json_file).st_mtime_ns
    info = synthetic.generate_synthetic_dataset(out, **SMALL)
    assert info["reused"]
    assert os.stat(json_file).st_mtime_ns == mtime


def test_regenerates_when_parameters_change(tmp_path):
    out = str(tmp_path)
    synthetic.generate_synthetic_dataset(out, **SMALL)
    info = synthetic.generate_synthetic_dataset(out, **{**SMALL, "num_val": 2})
    assert not info["reused"]
    assert len(_load(os.path.join(out, "val.json"))["images"]) == 2
    assert len(os.listdir(os.path.join(out, "val"))) == 2


def test_register(small_dataset):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    out, _ = small_dataset
    names = synthetic.register_synthetic_dataset(out, prefix="retinanet_ext_synthetic_test")
    names_again = synthetic.register_synthetic_dataset(out, prefix="retinanet_ext_synthetic_test")
    assert names == names_again == synthetic.synthetic_dataset_names("retinanet_ext_synthetic_test")
    dicts = DatasetCatalog.get(names["val"])
    assert len(dicts) == SMALL["num_val"]
    assert all(len(d["annotations"]) > 0 for d in dicts)
    assert {a["category_id"] for d in dicts for a in d["annotations"]} <= set(
        range(len(synthetic.CLASS_NAMES))
    )
    meta = MetadataCatalog.get(names["val"])
    assert meta.thing_classes == list(synthetic.CLASS_NAMES)
    assert meta.json_file == os.path.join(out, "val.json")


def test_demo_config_loads():
    from retinanet_ext.demo import DEFAULT_CONFIG_FILE, setup_demo_cfg

    assert os.path.isfile(DEFAULT_CONFIG_FILE)
    cfg = setup_demo_cfg("/tmp/unused", opts=["SOLVER.MAX_ITER", "7"])
    assert cfg.SOLVER.MAX_ITER == 7
    assert cfg.MODEL.WEIGHTS == ""
    assert cfg.MODEL.RETINANET.NUM_CLASSES == len(synthetic.CLASS_NAMES)
    assert cfg.INPUT.MIN_SIZE_TEST == cfg.DEMO.IMAGE_SIZE
    assert len(cfg.MODEL.ANCHOR_GENERATOR.SIZES) == len(cfg.MODEL.RETINANET.IN_FEATURES)


@pytest.mark.once
@pytest.mark.slow
def test_readme_main_command_end_to_end(tmp_path):
    # README's first command, `./run main`, with a tiny budget: the install is already
    # stamped (this suite runs from it), so this is `train_net.py --demo` in the venv.
    out = tmp_path / "demo"
    result = subprocess.run(
        [str(REPO_ROOT / "run"), "main",
         "SOLVER.MAX_ITER", "20",
         "SOLVER.WARMUP_ITERS", "5",
         "SOLVER.STEPS", "(15,)",
         "SOLVER.IMS_PER_BATCH", "4",
         "DATALOADER.NUM_WORKERS", "0",
         "DEMO.NUM_TRAIN", "16",
         "DEMO.NUM_VAL", "6",
         "DEMO.NUM_VIS_IMAGES", "2",
         # an untrained model scores low: draw whatever it finds
         "DEMO.VIS_SCORE_THRESH", "0.0",
         "OUTPUT_DIR", str(out)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[run] creating" not in result.stderr  # nothing reinstalled
    log = result.stdout + result.stderr
    assert re.search(r"\|\s+AP\s+\|\s+AP50\s+\|\s+AP75\s+\|", log)  # the COCO table
    with open(out / "demo_results.json") as f:
        saved = json.load(f)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert key in saved["bbox"]
    for name in synthetic.CLASS_NAMES:
        assert "AP-" + name in saved["bbox"]
    assert set(saved["timings_s"]) >= {"data", "train", "eval", "total"}
    # the demo config's PRECISION auto: bfloat16 only where the CPU has it natively
    assert saved["precision"] == ("bfloat16" if cpu_bf16_flags() else "float32")
    assert f"| {saved['precision']} |" in result.stdout  # the one-line summary says it
    pngs = sorted(os.listdir(out / "predictions"))
    assert len(pngs) == 2 and all(p.endswith(".png") for p in pngs)
    assert (out / "config.yaml").is_file()
