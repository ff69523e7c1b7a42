"""``predict --save-labels FORMAT``: the detections written as annotation files
(retinanet_ext/data/label_writers.py), each read back by the project's own reader of that
format to the same boxes and classes; an image without detections still gets a valid file."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from _docs_helpers import REPO_ROOT, block_commands, doc_section
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from retinanet_ext.data import register_dataset_spec
from retinanet_ext.data.label_writers import LABEL_WRITERS, clipped_boxes
from retinanet_ext.data.labeled_image import LabeledImage
from retinanet_ext_cli import main
from retinanet_ext_cli.predict import LABEL_FORMATS
from tests._predict_helpers import QUICK_CONFIG, TINY_OPTS, sample_rgb, write_tiny_checkpoint

CLASSES = ["circle", "square", "ring"]
# Pixels: VOC, COCO and CVAT write two decimals, YOLO six of the normalised coordinates.
BOX_TOLERANCE = 0.011


def read_back_spec(label_format: str, folder: Path, images: Path) -> str:
    """The ``--dataset`` spec (without NAME=) that reads ``folder``, a writer's output for
    the images in ``images`` (where COCO, CVAT and Label Studio files refer to them)."""
    return {
        "coco": f"coco:{folder}/annotations.json:{images}",
        "yolo": f"yolo:{folder}/data.yaml:train",
        "voc": f"voc:{folder}",
        "cvat": f"cvat:{folder}/annotations.xml:images={images}",
        "labelstudio": (f"labelstudio:{folder}/tasks.json:images={images}"
                        f":classes={folder}/classes.txt"),
    }[label_format]


def load_back(label_format: str, folder: Path, images: Path,
              name: str) -> dict[str, list[tuple[str, list]]]:
    """{image base name: [(class name, XYXY box), ...]} as the format's reader loads it."""
    register_dataset_spec(f"{name}={read_back_spec(label_format, folder, images)}")
    records = DatasetCatalog.get(name)
    classes = MetadataCatalog.get(name).thing_classes
    loaded = {}
    for record in records:
        loaded[Path(record["file_name"]).name] = [
            (classes[a["category_id"]],
             BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS))
            for a in record["annotations"]]
    return loaded


def assert_same_boxes(loaded: dict, expected: dict) -> None:
    assert sorted(loaded) == sorted(expected)
    for image, boxes in expected.items():
        got = loaded[image]
        assert [name for name, _ in got] == [name for name, _ in boxes], image
        if boxes:
            np.testing.assert_allclose([b for _, b in got], [b for _, b in boxes],
                                       atol=BOX_TOLERANCE, err_msg=image)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "images"
    folder.mkdir()
    for index, (height, width) in enumerate([(240, 320), (48, 64), (200, 160)]):
        Image.fromarray(sample_rgb(height, width, seed=index + 1)).save(
            folder / f"img{index}.png")
    Image.fromarray(sample_rgb(120, 90, seed=7)).save(folder / "img3.jpg", quality=95)
    return folder


def predict(weights: str, images: Path, out: Path, *args: str) -> int:
    return main(["predict", "--config-file", QUICK_CONFIG, "MODEL.WEIGHTS", weights, *TINY_OPTS,
                 "--input", str(images), "--output", str(out), "--no-draw", *args])


def expected_boxes(out: Path) -> dict[str, list[tuple[str, list]]]:
    """predictions.json as {image base name: [(class name, box clipped to the image)]}."""
    summary = json.loads((out / "summary.json").read_text())
    detections = json.loads((out / "predictions.json").read_text())
    expected = {}
    for image in summary["images"]:
        boxes = [(d["category_name"], [d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2],
                                       d["bbox"][1] + d["bbox"][3]])
                 for d in detections if d["image_id"] == image["id"]]
        limits = [image["width"], image["height"]] * 2
        expected[Path(image["file_name"]).name] = [
            (name, np.clip(box, 0, limits).tolist()) for name, box in boxes]
    return expected


@pytest.fixture(scope="module")
def predicted(weights: str, images: Path, tmp_path_factory) -> Path:
    """One predict run writing every format."""
    out = tmp_path_factory.mktemp("predict") / "out"
    formats = [arg for name in LABEL_WRITERS for arg in ("--save-labels", name)]
    assert predict(weights, images, out, *formats) == 0
    return out


def test_the_cli_lists_the_library_formats() -> None:
    assert LABEL_FORMATS == tuple(LABEL_WRITERS)


@pytest.mark.parametrize("label_format", list(LABEL_WRITERS))
def test_predictions_round_trip(predicted: Path, images: Path, label_format: str,
                                new_name) -> None:
    expected = expected_boxes(predicted)
    assert sum(map(len, expected.values())) > 20 and all(expected.values())
    summary = json.loads((predicted / "summary.json").read_text())
    folder = predicted / "labels" / label_format
    assert summary["labels"][label_format]["folder"] == str(folder)
    assert_same_boxes(load_back(label_format, folder, images, new_name(label_format)),
                      expected)


def test_an_image_without_detections_still_gets_a_valid_file(
        weights: str, images: Path, predicted: Path, tmp_path: Path, new_name) -> None:
    # A threshold between two images' best scores: the first keeps a few boxes, the other none.
    best = {}
    for detection in json.loads((predicted / "predictions.json").read_text()):
        name = Path(detection["file_name"]).name
        best[name] = max(best.get(name, 0.0), detection["score"])
    ranked = sorted(best.items(), key=lambda item: -item[1])
    threshold = (ranked[0][1] + ranked[1][1]) / 2
    out = tmp_path / "out"
    formats = [arg for name in LABEL_WRITERS for arg in ("--save-labels", name)]
    assert predict(weights, images, out, "--score-thresh", f"{threshold:.6f}", *formats) == 0
    expected = expected_boxes(out)
    assert expected[ranked[0][0]] and not expected[ranked[1][0]]
    empty_stem = Path(ranked[1][0]).stem
    assert (out / "labels" / "yolo" / "labels" / f"{empty_stem}.txt").read_text() == ""
    voc = ET.parse(out / "labels" / "voc" / "Annotations" / f"{empty_stem}.xml").getroot()
    assert voc.find("size/width").text and voc.find("object") is None
    for label_format in LABEL_WRITERS:
        loaded = load_back(label_format, out / "labels" / label_format, images,
                           new_name(label_format))
        assert_same_boxes(loaded, expected)


@pytest.mark.parametrize("label_format", list(LABEL_WRITERS))
def test_writers_with_no_box_at_all(images: Path, tmp_path: Path, label_format: str) -> None:
    """Every image without boxes (a model that finds nothing): files that parse."""
    empty = [LabeledImage(str(images / "img1.png"), 64, 48, np.zeros((0, 4)),
                          np.zeros(0, dtype=int), np.zeros(0))]
    written = LABEL_WRITERS[label_format](empty, CLASSES, str(tmp_path / label_format))
    assert written and all(Path(path).is_file() for path in written)
    for path in written:
        if path.endswith(".json"):
            json.loads(Path(path).read_text())
        elif path.endswith(".xml"):
            ET.parse(path)


def test_duplicate_names_and_boxes_past_the_edge(tmp_path: Path, new_name) -> None:
    """Two images with one base name (different folders and extensions) keep apart, and
    boxes past the image edge are clipped (YOLO's coordinates must lie in [0, 1])."""
    inputs = tmp_path / "inputs"
    for folder, suffix, seed in (("a", "png", 8), ("b", "jpg", 9)):
        (inputs / folder).mkdir(parents=True)
        Image.fromarray(sample_rgb(48, 64, seed=seed)).save(inputs / folder / f"img1.{suffix}")
    labeled = [
        LabeledImage(str(inputs / "a" / "img1.png"), 64, 48, [[-3, 2, 30, 40]], [1], [0.9]),
        LabeledImage(str(inputs / "b" / "img1.jpg"), 64, 48, [[10, 10, 70, 50], [1, 1, 5, 5]],
                     [2, 0], None),
    ]
    for label_format in LABEL_WRITERS:
        folder = tmp_path / label_format
        LABEL_WRITERS[label_format](labeled, CLASSES, str(folder))
        loaded = load_back(label_format, folder, inputs, new_name(label_format))
        boxes = sorted((len(b), [n for n, _ in b], np.round([x for _, x in b], 2).tolist())
                       for b in loaded.values())
        assert boxes == [(1, ["square"], [[0, 2, 30, 40]]),
                         (2, ["ring", "circle"], [[10, 10, 64, 48], [1, 1, 5, 5]])], label_format
    assert sorted(p.name for p in (tmp_path / "yolo" / "images").iterdir()) == [
        "img1.png", "img1_1.jpg"]
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["a/img1.png", "b/img1.jpg"]
    assert coco["info"]["image_root"] == str(inputs)


def test_coco_is_a_full_dataset_file(predicted: Path) -> None:
    data = json.loads((predicted / "labels" / "coco" / "annotations.json").read_text())
    assert [c["name"] for c in data["categories"]] == CLASSES
    assert [c["id"] for c in data["categories"]] == [1, 2, 3]
    assert {i["file_name"] for i in data["images"]} == {
        "img0.png", "img1.png", "img2.png", "img3.jpg"}
    first = data["annotations"][0]
    assert set(first) >= {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "score"}


def test_an_unknown_format_is_a_usage_error(weights: str, images: Path, tmp_path: Path,
                                            capsys) -> None:
    status = predict(weights, images, tmp_path / "out", "--save-labels", "coco",
                     "--save-labels", "labelbox")
    err = capsys.readouterr().err
    assert status == 2 and "unknown --save-labels format 'labelbox'" in err
    assert all(name in err for name in LABEL_WRITERS)
    assert not (tmp_path / "out").exists()  # refused before the model ran


def test_labels_already_there_are_not_overwritten(weights: str, images: Path,
                                                  tmp_path: Path, capsys) -> None:
    corrected = tmp_path / "out" / "labels" / "voc" / "Annotations"
    corrected.mkdir(parents=True)
    (corrected / "img0.xml").write_text("<annotation/>")
    status = predict(weights, images, tmp_path / "out", "--save-labels", "voc")
    assert status == 2 and "holds files already" in capsys.readouterr().err
    assert (corrected / "img0.xml").read_text() == "<annotation/>"


def test_clipped_boxes() -> None:
    image = LabeledImage("a.png", 10, 8, [[-1, -2, 11, 9], [2, 3, 4, 5]], [0, 1])
    np.testing.assert_array_equal(clipped_boxes(image), [[0, 0, 10, 8], [2, 3, 4, 5]])


@pytest.mark.once
@pytest.mark.slow
def test_docs_labelling_loop_commands(datasets_root: Path, tmp_path: Path) -> None:
    """docs/use.md, "The labelling loop", as written: predict --save-labels on BCCD images
    with a tiny checkpoint standing in for output/bccd/model_final.pth (its architecture's
    options appended), then train_net.py on the CVAT file it wrote, for 2 iterations."""
    commands = block_commands(doc_section("use.md", "## The labelling loop"))
    assert [c.split()[:2] for c in commands] == [
        ["retinanet-ext", "predict"], ["python", "train_net.py"]]
    (tmp_path / "bccd").mkdir()
    write_tiny_checkpoint(tmp_path / "bccd" / "model_final.pth")
    argv = [shlex.split(command.replace("../shared/datasets", str(datasets_root))
                        .replace("output/", f"{tmp_path}/")) for command in commands]
    assert main(argv[0][1:] + TINY_OPTS) == 0
    out = tmp_path / "bccd" / "to_label"
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["images"]) == 8 and sum(i["num_detections"] for i in summary["images"])
    assert sorted(summary["labels"]) == ["cvat", "yolo"]
    assert len(list((out / "labels" / "yolo" / "labels").glob("BloodImage_0002*.txt"))) == 8
    train_tiny = ["INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", "224",
                  "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
                  "DATALOADER.NUM_WORKERS", "0"]
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), *argv[1][2:], *TINY_OPTS, *train_tiny],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bccd_more" in result.stdout + result.stderr
    assert (tmp_path / "bccd_more" / "model_final.pth").is_file()
