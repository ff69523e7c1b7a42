"""YOLO txt datasets: Roboflow and Ultralytics data.yaml layouts, LabelImg's YOLO folders.

The fixtures copy the layout, file names and text of public exports (cited at each),
with small images made here in place of the photographs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from retinanet_ext.data import (
    DatasetError,
    register_dataset_spec,
    register_yolo_dataset,
    validate_dataset,
)
from retinanet_ext.data.yolo import label_path
from tests._data_helpers import blank_image, data_warnings

_image = blank_image
_warnings = data_warnings


# github.com/0verwritten/parking-lot-yolo-detection, datasets/Parking-Space-1/data.yaml
# (commit 15c248a2): a Roboflow "YOLOv8" export as the roboflow package writes it, whose
# `path` names the download folder relative to where it ran.
PARKING_DATA_YAML = """\
names:
- CarIn
- GateClosed
- GateOpened
nc: 3
roboflow:
  license: CC BY 4.0
  project: parking-space-cgi5j
  url: https://universe.roboflow.com/worker-lod8r/parking-space-cgi5j/dataset/1
  version: 1
  workspace: worker-lod8r
path: ./Parking-Space-1
test: ../test/images
train: ../train/images
val: ../valid/images
"""
# Same repository, train/labels/image-001_jpeg.rf.3c8722025b31239f5f4d11653b5990a2.txt
# (no newline at the end, as exported).
PARKING_LABEL = (
    "2 0.671875 0.19453125 0.1265625 0.38125\n"
    "0 0.39140625 0.6875 0.72421875 0.56640625\n"
    "0 0.19609375 0.28828125 0.10703125 0.17265625\n"
    "0 0.109375 0.25 0.09296875 0.125\n"
    "0 0.53046875 0.340625 0.28046875 0.16015625"
)
PARKING_STEM = "image-001_jpeg.rf.3c8722025b31239f5f4d11653b5990a2"


@pytest.fixture
def roboflow_export(tmp_path: Path) -> Path:
    root = tmp_path / "Parking-Space-1"
    (root / "data.yaml").parent.mkdir(parents=True)
    (root / "data.yaml").write_text(PARKING_DATA_YAML)
    _image(root / "train" / "images" / f"{PARKING_STEM}.jpg", (640, 640))
    (root / "train" / "labels").mkdir(parents=True)
    (root / "train" / "labels" / f"{PARKING_STEM}.txt").write_text(PARKING_LABEL)
    _image(root / "train" / "images" / "image-006_jpeg.rf.2aa69a4d.jpg", (640, 640))  # no label
    for split in ("valid", "test"):
        _image(root / split / "images" / "image-031_jpeg.rf.c302a1cd.jpg", (640, 640))
        (root / split / "labels").mkdir(parents=True)
        (root / split / "labels" / "image-031_jpeg.rf.c302a1cd.txt").write_text(
            "1 0.5 0.5 0.25 0.5\n")
    return root


def test_roboflow_export(roboflow_export, new_name, caplog, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path / "Parking-Space-1" / "train")  # `path` exists nowhere from here
    yaml_file = roboflow_export / "data.yaml"
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.data"):
        train = register_dataset_spec(f"{new_name('train')}=yolo:{yaml_file}:train")
        summary = validate_dataset(train)
    assert summary.thing_classes == ["CarIn", "GateClosed", "GateOpened"]
    assert summary.num_images == 2 and summary.images_without_boxes == 1
    assert summary.boxes_per_class == {"CarIn": 4, "GateClosed": 0, "GateOpened": 1}
    record = next(r for r in DatasetCatalog.get(train) if r["annotations"])
    # "2 0.671875 0.19453125 0.1265625 0.38125" on 640x640 -> XYXY pixels
    assert record["annotations"][0]["category_id"] == 2
    assert record["annotations"][0]["bbox"] == pytest.approx(
        [(0.671875 - 0.1265625 / 2) * 640, (0.19453125 - 0.38125 / 2) * 640,
         (0.671875 + 0.1265625 / 2) * 640, (0.19453125 + 0.38125 / 2) * 640])
    assert any("1 of 2 images have no label file" in w and "image-006" in w
               for w in _warnings(caplog))
    val = register_yolo_dataset(new_name("val"), str(yaml_file), "val")  # ../valid/images
    assert validate_dataset(val).boxes_per_class["GateClosed"] == 1
    assert MetadataCatalog.get(val).thing_classes == ["CarIn", "GateClosed", "GateOpened"]


def test_label_path_rule():
    """Ultralytics' img2label_paths: the last /images/ becomes /labels/, extension .txt."""
    assert label_path("/d/images/x/images/train/a.b.jpg") == "/d/images/x/labels/train/a.b.txt"
    assert label_path("/d/train/img.PNG") == "/d/train/img.txt"  # beside it: no images folder


def _ultralytics_set(root: Path) -> None:
    """coco8's layout (ultralytics/cfg/datasets/coco8.yaml): images/{train,val} and
    labels/{train,val} under the root; a nested folder and a non-image file too."""
    _image(root / "images" / "train" / "000000000009.jpg")
    _image(root / "images" / "train" / "sub" / "000000000025.png")
    (root / "images" / "train" / "notes.md").write_text("not an image")
    (root / "labels" / "train" / "sub").mkdir(parents=True)
    (root / "labels" / "train" / "000000000009.txt").write_text("45 0.479 0.688 0.956 0.595\n")
    (root / "labels" / "train" / "sub" / "000000000025.txt").write_text("23 0.77 0.489 0.34 0.69\n")
    _image(root / "images" / "val" / "000000000036.jpg")
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "val" / "000000000036.txt").write_text("0 0.5 0.5 0.5 0.5\n")


def test_ultralytics_yaml_with_names_dict_and_file_list(new_name, tmp_path, monkeypatch):
    root = tmp_path / "datasets" / "coco8"
    _ultralytics_set(root)
    (root / "val.txt").write_text("./images/val/000000000036.jpg\n")
    names = "".join(f"  {i}: class{i}\n" for i in range(80))
    (tmp_path / "coco8.yaml").write_text(
        "path: datasets/coco8  # dataset root dir\ntrain: images/train\nval: val.txt\n"
        f"test: # test images (optional)\n\n# Classes\nnames:\n{names}")
    monkeypatch.chdir(tmp_path)  # `path` is relative to the working directory
    train = register_yolo_dataset(new_name("train"), "coco8.yaml", "train")
    records = DatasetCatalog.get(train)
    assert [Path(r["file_name"]).name for r in records] == ["000000000009.jpg", "000000000025.png"]
    assert [a["category_id"] for r in records for a in r["annotations"]] == [45, 23]
    assert len(MetadataCatalog.get(train).thing_classes) == 80
    val = register_yolo_dataset(new_name("val"), "coco8.yaml", "val")
    assert Path(DatasetCatalog.get(val)[0]["file_name"]).name == "000000000036.jpg"
    with pytest.raises(DatasetError, match=r"has no split 'test'; its splits: \['train', 'val'\]"):
        register_yolo_dataset(new_name(), "coco8.yaml", "test")


def test_list_of_folders_and_download_script_is_never_run(new_name, tmp_path):
    """ultralytics/cfg/datasets/VOC.yaml: `train` is a list of folders and `download` is
    a Python script; safe YAML reads it as text and nothing runs it."""
    root = tmp_path / "VOC"
    _image(root / "images" / "train2012" / "2008_000008.jpg")
    _image(root / "images" / "val2007" / "000005.jpg")
    for stem, folder in (("2008_000008", "train2012"), ("000005", "val2007")):
        (root / "labels" / folder).mkdir(parents=True)
        (root / "labels" / folder / f"{stem}.txt").write_text("14 0.5 0.5 0.2 0.4\n")
    marker = tmp_path / "download_ran"
    (tmp_path / "VOC.yaml").write_text(
        f"path: {root}\ntrain: # train images (relative to 'path')\n  - images/train2012\n"
        "  - images/val2007\nval:\n  - images/val2007\n"
        "names:\n" + "".join(f"  {i}: c{i}\n" for i in range(20)) +
        f"download: |\n  from pathlib import Path\n  Path('{marker}').write_text('ran')\n"
        f"extra: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(DatasetError, match="not valid safe YAML"):
        register_yolo_dataset(new_name(), str(tmp_path / "VOC.yaml"), "train")
    text = (tmp_path / "VOC.yaml").read_text().replace(
        f"extra: !!python/object/apply:os.system ['touch {marker}']\n", "")
    (tmp_path / "VOC.yaml").write_text(text)
    name = register_yolo_dataset(new_name(), str(tmp_path / "VOC.yaml"), "train")
    assert validate_dataset(name).num_images == 2
    assert not marker.exists()


# docs.ultralytics.com/datasets/segment/ ("Ultralytics YOLO format"): one object as a
# 3-point polygon, one as a 5-point polygon.
POLYGON_ROWS = (
    "0 0.681 0.485 0.670 0.487 0.676 0.487\n"
    "1 0.504 0.000 0.501 0.004 0.498 0.004 0.493 0.010 0.492 0.0104\n"
)


def test_polygon_rows_become_their_boxes(new_name, tmp_path, caplog):
    _image(tmp_path / "set" / "images" / "a.jpg", (1000, 1000))
    (tmp_path / "set" / "labels").mkdir(parents=True)
    (tmp_path / "set" / "labels" / "a.txt").write_text(POLYGON_ROWS + "1 0.5 0.5 0.2 0.2\n")
    (tmp_path / "set" / "classes.txt").write_text("person\nbicycle\n")
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.data"):
        name = register_dataset_spec(f"{new_name()}=yolo:{tmp_path / 'set' / 'images'}")
        boxes = [a["bbox"] for a in DatasetCatalog.get(name)[0]["annotations"]]
    assert boxes[0] == pytest.approx([670, 485, 681, 487])
    assert boxes[1] == pytest.approx([492, 0, 504, 10.4])
    assert boxes[2] == pytest.approx([400, 400, 600, 600])
    assert any("note: 2 label rows are segmentation polygons" in w for w in _warnings(caplog))


def test_malformed_rows_are_reported_by_file_and_line(new_name, tmp_path):
    images = tmp_path / "images"
    _image(images / "a.jpg")
    _image(images / "b.jpg")
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n"
        "3 0.5 0.5 0.2 0.2\n"         # class id 3 of 3 classes
        "0 0.5 0.5 0.2\n"             # 4 columns
        "\n"
        "1 0.5 0.5 0.2 0.2 0.9\n"     # 6 columns: not a polygon
    )
    (labels / "b.txt").write_text(
        "1 250 120 40 30\n"           # pixel coordinates
        "x 0.5 0.5 0.2 0.2\n"         # not a number
        "1.5 0.5 0.5 0.2 0.2\n"       # not an integer class
    )
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    name = register_yolo_dataset(new_name(), str(images),
                                 classes_file=str(tmp_path / "classes.txt"))
    with pytest.raises(DatasetError) as error:
        validate_dataset(name)
    message = str(error.value)
    assert "6 malformed rows" in message
    for where, what in [
        ("a.txt:2", "class id 3 is not one of the dataset's 3 classes (0..2)"),
        ("a.txt:3", "expected 5 columns"),
        ("a.txt:5", "expected 5 columns"),
        ("b.txt:1", "coordinate 250 is outside [0, 1]"),
        ("b.txt:2", "expected numbers"),
        ("b.txt:3", "class id 1.5"),
    ]:
        assert f"{where}: {what}" in message, (where, message)
    assert "found 4" in message and "found 6" in message
    assert "a.txt:1" not in message and "a.txt:4" not in message


# github.com/0verwritten/parking-lot-yolo-detection, datasets/data/train: LabelImg's YOLO
# mode, images/*.jpeg with labels/*.txt and the class list in labels/classes.txt.
LABELIMG_CLASSES = "CarIn\nCarOut\nGateOpened\nGateClosed\n"
LABELIMG_LABEL = (
    "2 0.671580 0.194792 0.126179 0.381250\n"
    "0 0.391509 0.687500 0.724057 0.566667\n"
    "0 0.196344 0.288542 0.107311 0.172917\n"
    "0 0.109080 0.250000 0.093160 0.125000\n"
    "0 0.530660 0.340625 0.280660 0.160417\n"
)


def test_labelimg_yolo_folder_finds_its_classes_file(new_name, tmp_path):
    train = tmp_path / "data" / "train"
    _image(train / "images" / "image-001.jpeg", (424, 240))
    _image(train / "images" / "image-013.jpeg", (424, 240))
    (train / "labels").mkdir(parents=True)
    (train / "labels" / "classes.txt").write_text(LABELIMG_CLASSES)
    (train / "labels" / "image-001.txt").write_text(LABELIMG_LABEL)
    (train / "labels" / "image-013.txt").write_text("")  # an image without objects
    name = register_dataset_spec(f"{new_name()}=yolo:{train / 'images'}")
    summary = validate_dataset(name)
    assert summary.thing_classes == ["CarIn", "CarOut", "GateOpened", "GateClosed"]
    assert summary.boxes_per_class == {"CarIn": 4, "CarOut": 0, "GateOpened": 1, "GateClosed": 0}
    assert summary.images_without_boxes == 1
    # given explicitly, as the second field or as classes=
    (tmp_path / "names.txt").write_text("a\nb\nc\nd\n")
    for spec in (f"yolo:{train / 'images'}:{tmp_path / 'names.txt'}",
                 f"yolo:{train / 'images'}:classes={tmp_path / 'names.txt'}"):
        other = register_dataset_spec(f"{new_name()}={spec}")
        assert MetadataCatalog.get(other).thing_classes == ["a", "b", "c", "d"]


def test_yolo_errors_name_the_file(new_name, tmp_path):
    _image(tmp_path / "images" / "a.jpg")
    with pytest.raises(DatasetError, match=r"No class names for the YOLO images .*classes\.txt"):
        register_yolo_dataset(new_name(), str(tmp_path / "images"))
    (tmp_path / "data.yaml").write_text("train: images\nval: images\nnames: [a]\n")
    with pytest.raises(DatasetError, match=r"name the split of .*data\.yaml.*\['train', 'val'\]"):
        register_dataset_spec(f"{new_name()}=yolo:{tmp_path / 'data.yaml'}")
    (tmp_path / "bad.yaml").write_text("train: [images\nnames: [a]\n")
    with pytest.raises(DatasetError, match=r"bad\.yaml: not valid safe YAML"):
        register_yolo_dataset(new_name(), str(tmp_path / "bad.yaml"), "train")
    (tmp_path / "gone.yaml").write_text("train: missing/images\nnames: [a]\n")
    with pytest.raises(DatasetError, match=r"gone\.yaml: split 'train' entry 'missing/images' "
                                           r"not found"):
        register_yolo_dataset(new_name(), str(tmp_path / "gone.yaml"), "train")
    (tmp_path / "ids.yaml").write_text("train: images\nnames: {0: a, 2: b}\n")
    with pytest.raises(DatasetError, match=r"'names' must give ids 0\.\.1, found \[0, 2\]"):
        register_yolo_dataset(new_name(), str(tmp_path / "ids.yaml"), "train")
    (tmp_path / "nc.yaml").write_text("train: images\nnames: [a, b]\nnc: 3\n")
    with pytest.raises(DatasetError, match=r"'nc' is 3 but 'names' has 2"):
        register_yolo_dataset(new_name(), str(tmp_path / "nc.yaml"), "train")
    with pytest.raises(DatasetError, match="YOLO dataset not found"):
        register_yolo_dataset(new_name(), str(tmp_path / "nowhere"), "train")


def test_yaml_alias_bomb_is_refused_quickly(new_name, tmp_path):
    """YAML aliases can nest a value 9^9 deep in a few lines; it is refused, never printed."""
    (tmp_path / "images").mkdir()
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 10))
    for extra, message in [("train: images\nnames: *a9\n", "must be a plain string"),
                           ("train: *a9\nnames: [a]\n", "found a list of 9 entries"),
                           ("train: images\npath: *a9\nnames: [a]\n", "'path' must be a folder"),
                           ("train: images\nnames: [a]\nnc: *a9\n", "'nc' is a list of 9")]:
        (tmp_path / "bomb.yaml").write_text(bomb + extra)
        with pytest.raises(DatasetError, match=message):
            register_yolo_dataset(new_name(), str(tmp_path / "bomb.yaml"), "train")
