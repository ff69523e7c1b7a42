"""retinanet_ext.Predictor: every input kind, Detectron2's pre-processing, class names from
the checkpoint (also in a fresh process where the training dataset is not registered)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinanet_ext import Predictor
from retinanet_ext.export.runtime import (
    ImageReadError,
    load_image_rgb,
    resize_shortest_edge,
    resized_shape,
)
from tests._predict_helpers import (
    CLASSES,
    QUICK_CONFIG,
    TINY_OPTS,
    sample_rgb,
    write_tiny_checkpoint,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth")


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return Predictor(QUICK_CONFIG, str(checkpoint), opts=TINY_OPTS)


def assert_same(a, b) -> None:
    assert len(a) == len(b) > 0
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_every_input_kind_gives_the_same_detections(predictor: Predictor, tmp_path: Path) -> None:
    rgb = sample_rgb(240, 320)
    path = tmp_path / "image.png"
    Image.fromarray(rgb).save(path)
    from_path = predictor(str(path))
    assert from_path.file_name == str(path)
    assert from_path.image_size == (240, 320)
    assert_same(from_path, predictor(path))  # pathlib.Path
    assert_same(from_path, predictor(rgb[:, :, ::-1].copy()))  # BGR, as cv2.imread gives
    assert_same(from_path, predictor(rgb, rgb=True))
    assert_same(from_path, predictor(Image.fromarray(rgb)))
    gray = predictor(rgb[:, :, 0].copy())
    assert gray.image_size == (240, 320)
    # The BGR default matters: the same array read as RGB is another image.
    swapped = predictor(rgb)
    assert len(swapped) != len(from_path) or not np.allclose(swapped.scores, from_path.scores)


def test_outputs_are_in_input_pixels_with_names(predictor: Predictor) -> None:
    image = sample_rgb(480, 640)
    dets = predictor(image, rgb=True)
    assert dets.boxes.shape == (len(dets), 4) and dets.boxes.dtype == np.float32
    assert len(dets) > 10  # the nudged classifier is confident enough
    assert dets.boxes[:, 2].max() > 224  # scaled back from the 160x213 network input
    assert (dets.boxes[:, 0::2] >= 0).all() and (dets.boxes[:, 0::2] <= 640).all()
    assert (dets.boxes[:, 1::2] >= 0).all() and (dets.boxes[:, 1::2] <= 480).all()
    assert (dets.scores > 0.3).all() and (np.diff(dets.scores) <= 0).all()
    assert dets.class_names == [CLASSES[c] for c in dets.class_ids]
    coco = dets.to_coco(image_id=5)
    assert coco[0]["image_id"] == 5 and coco[0]["category_name"] == dets.class_names[0]
    x1, y1, x2, y2 = dets.boxes[0].tolist()
    assert coco[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])


def test_matches_detectron2_default_predictor(predictor: Predictor, checkpoint: Path) -> None:
    from detectron2.engine import DefaultPredictor

    from retinanet_ext.engine import load_config

    cfg = load_config(QUICK_CONFIG, TINY_OPTS + ["MODEL.WEIGHTS", str(checkpoint)])
    bgr = sample_rgb(333, 517, seed=3)[:, :, ::-1].copy()
    theirs = DefaultPredictor(cfg)(bgr)["instances"]
    ours = predictor(bgr)
    assert len(ours) == len(theirs) > 0
    np.testing.assert_array_equal(ours.boxes, theirs.pred_boxes.tensor.numpy())
    np.testing.assert_array_equal(ours.scores, theirs.scores.numpy())


def test_a_list_is_batched_and_the_threshold_applies(predictor: Predictor) -> None:
    images = [sample_rgb(200, 300, seed=1), sample_rgb(300, 200, seed=2)]
    batched = predictor(images, rgb=True)
    assert isinstance(batched, list) and len(batched) == 2
    assert [d.image_size for d in batched] == [(200, 300), (300, 200)]
    strict = predictor(images[0], rgb=True, score_thresh=0.4)
    assert (strict.scores > 0.4).all()
    assert len(strict) < len(predictor(images[0], rgb=True))
    assert predictor.model.test_score_thresh == pytest.approx(0.3)  # restored after the call


def test_a_corrupt_file_is_named(predictor: Predictor, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        predictor(str(bad))
    with pytest.raises(ImageReadError, match="uint8"):
        predictor(np.zeros((8, 8, 3), dtype=np.float32))


def test_checkpoint_without_metadata_falls_back(tmp_path: Path, new_name, caplog) -> None:
    bare = write_tiny_checkpoint(tmp_path / "bare.pth", classes=None)
    with caplog.at_level(logging.WARNING, logger="retinanet_ext"):
        unnamed = Predictor(QUICK_CONFIG, str(bare), opts=TINY_OPTS)
    assert unnamed.class_names == ["class_0", "class_1", "class_2"]
    assert "carries no class names" in caplog.text

    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = new_name("cells")
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(thing_classes=["Platelets", "RBC", "WBC"])
    named = Predictor(QUICK_CONFIG, str(bare), opts=TINY_OPTS + ["DATASETS.TEST", f"('{name}',)"])
    assert named.class_names == ["Platelets", "RBC", "WBC"]


def test_class_names_come_from_the_checkpoint(predictor: Predictor) -> None:
    assert predictor.class_names == list(CLASSES)
    assert predictor.metadata.datasets == ["shapes"]


def test_runtime_preprocessing_equals_detectron2s() -> None:
    from detectron2.data import transforms as T

    for height, width in [(480, 640), (333, 517), (600, 401), (100, 3000), (64, 64), (1, 5)]:
        for short, longest in [(160, 224), (800, 1333), (320, 448)]:
            expected = T.ResizeShortestEdge.get_output_shape(height, width, short, longest)
            assert resized_shape(height, width, short, longest) == tuple(expected)
    image = sample_rgb(333, 517)
    theirs = T.ResizeShortestEdge([160, 160], 224).get_transform(image).apply_image(image)
    np.testing.assert_array_equal(resize_shortest_edge(image, 160, 224), theirs)


def test_runtime_reader_equals_detectron2s(tmp_path: Path) -> None:
    from detectron2.data.detection_utils import read_image

    image = Image.fromarray(sample_rgb(50, 70))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: both readers must apply the orientation
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    ours, name = load_image_rgb(str(path))
    assert name == str(path) and ours.shape == (70, 50, 3)
    np.testing.assert_array_equal(ours, read_image(str(path), format="RGB"))


@pytest.mark.slow
def test_trained_on_a_custom_dataset_names_classes_in_a_fresh_process(
    datasets_root: Path, tmp_path: Path
) -> None:
    images = datasets_root / "bccd" / "BCCD" / "JPEGImages"
    rows = [f"{images / 'BloodImage_00000.jpg'},68,315,286,480,WBC",
            f"{images / 'BloodImage_00000.jpg'},346,361,446,454,RBC",
            f"{images / 'BloodImage_00001.jpg'},1,244,82,360,Platelets",
            f"{images / 'BloodImage_00002.jpg'},120,200,210,290,RBC"]
    (tmp_path / "cells.csv").write_text("\n".join(rows) + "\n")
    tiny = [o for pair in zip(TINY_OPTS[::2], TINY_OPTS[1::2], strict=True) for o in pair
            if pair[0] != "DATASETS.TEST"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    trained = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), "--config-file", QUICK_CONFIG,
         "--dataset", f"cells_csv=csv:{tmp_path / 'cells.csv'}", *tiny,
         "DATASETS.TRAIN", "('cells_csv',)", "DATASETS.TEST", "()",
         "INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", "224",
         "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
         "SOLVER.BASE_LR", "0.001", "DATALOADER.NUM_WORKERS", "0",
         "OUTPUT_DIR", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    weights = tmp_path / "out" / "model_final.pth"
    # A fresh interpreter: cells_csv is not registered there; DATASETS.TEST is empty.
    script = (
        "import json, sys\n"
        "from retinanet_ext import Predictor\n"
        "from detectron2.data import DatasetCatalog\n"
        "assert 'cells_csv' not in DatasetCatalog.list()\n"
        f"p = Predictor({QUICK_CONFIG!r}, {str(weights)!r}, opts={tiny!r} + "
        "['MODEL.RETINANET.SCORE_THRESH_TEST', '0.0'])\n"
        f"inputs = [{str(images / 'BloodImage_00003.jpg')!r}]\n"
        "from PIL import Image; import numpy as np\n"
        "pil = Image.open(inputs[0]); inputs += [pil, np.asarray(pil)[:, :, ::-1].copy()]\n"
        "dets = p(inputs)\n"
        "print(json.dumps({'classes': p.class_names,\n"
        "                  'names': sorted({n for d in dets for n in d.class_names}),\n"
        "                  'counts': [len(d) for d in dets]}))\n"
    )
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path, env=env)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    result = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert result["classes"] == ["Platelets", "RBC", "WBC"]
    assert result["counts"][0] > 0 and len(set(result["counts"])) == 1
    assert set(result["names"]) <= {"Platelets", "RBC", "WBC"} and result["names"]


def test_from_model_wraps_a_model_in_memory(predictor: Predictor) -> None:
    wrapped = Predictor.from_model(predictor.model, predictor.cfg, ["x", "y", "z"])
    image = sample_rgb(200, 300, seed=9)
    ours, theirs = wrapped(image, rgb=True), predictor(image, rgb=True)
    assert_same(ours, theirs)
    assert ours.class_names == [["x", "y", "z"][c] for c in ours.class_ids]
    unnamed = Predictor.from_model(predictor.model, predictor.cfg)
    assert unnamed.class_names == ["class_0", "class_1", "class_2"]
