"""Validation rules and error messages, on small synthetic datasets written to tmp_path."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import BoxMode
from PIL import Image

from retinanet_ext.data import (
    DatasetError,
    make_split,
    parse_dataset_spec,
    read_classes_file,
    register_coco_dataset,
    register_csv_dataset,
    register_dataset_spec,
    register_voc_dataset,
    unregister_dataset,
    validate_dataset,
)
from retinanet_ext.data.validation import read_image_header


def _image(path: Path, size: tuple[int, int] = (100, 80), image_format: str | None = None,
           **save_options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 200)).save(path, format=image_format, **save_options)
    return path


def _voc_xml(path: Path, objects: list[tuple[str, tuple[float, ...]]],
             size: tuple[int, int] | None = (100, 80)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>" if size else ""
    objects_xml = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects
    )
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename>{size_xml}"
                    f"{objects_xml}</annotation>")
    return path


def _voc(root: Path, images: dict[str, list[tuple[str, tuple[float, ...]]]]) -> Path:
    for image_id, objects in images.items():
        _image(root / "JPEGImages" / f"{image_id}.jpg")
        _voc_xml(root / "Annotations" / f"{image_id}.xml", objects)
    return root


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "retinanet_ext.data" and r.levelno == logging.WARNING]


# --- CSV ------------------------------------------------------------------------------


def test_csv_with_empty_rows_and_classes_file(new_name, tmp_path):
    _image(tmp_path / "images" / "a.jpg")
    _image(tmp_path / "images" / "b.jpg")
    _image(tmp_path / "images" / "c.png", image_format="PNG")
    (tmp_path / "boxes.csv").write_text(
        "images/a.jpg,10,10,50,40,dog\n"
        "images/a.jpg,60,20,90,70,cat\n"
        "images/b.jpg,,,,,\n"
        "\n"
        "images/c.png,1,2,30,40,dog\n"
    )
    (tmp_path / "classes.csv").write_text("dog,1\ncat,0\nbird,2\n")
    name = register_csv_dataset(new_name("csv"), str(tmp_path / "boxes.csv"),
                                classes_file=str(tmp_path / "classes.csv"))
    # the classes file orders the classes by id, and fixes them before loading
    assert MetadataCatalog.get(name).thing_classes == ["cat", "dog", "bird"]
    summary = validate_dataset(name)
    assert summary.num_images == 3
    assert summary.images_without_boxes == 1
    assert summary.boxes_per_class == {"cat": 1, "dog": 2, "bird": 0}
    records = DatasetCatalog.get(name)
    assert [Path(r["file_name"]).name for r in records] == ["a.jpg", "b.jpg", "c.png"]
    assert records[1]["annotations"] == []
    assert records[0]["annotations"][1] == {
        "bbox": [60.0, 20.0, 90.0, 70.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
        "iscrowd": 0,
    }


def test_csv_classes_from_data_header_and_image_root(new_name, tmp_path):
    _image(tmp_path / "pics" / "a.jpg")
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "boxes.csv").write_text(
        "path,x1,y1,x2,y2,class\na.jpg,1,1,9,9,zebra\na.jpg,2,2,8,8,ant\n"
    )
    name = register_csv_dataset(new_name("csv"), str(tmp_path / "ann" / "boxes.csv"),
                                image_root=str(tmp_path / "pics"))
    assert validate_dataset(name).thing_classes == ["ant", "zebra"]


def test_csv_unknown_class_is_an_error(new_name, tmp_path):
    _image(tmp_path / "a.jpg")
    (tmp_path / "boxes.csv").write_text("a.jpg,1,1,9,9,dog\na.jpg,2,2,8,8,wolf\n")
    (tmp_path / "classes.txt").write_text("dog\ncat\n")
    name = register_csv_dataset(new_name("csv"), str(tmp_path / "boxes.csv"),
                                classes_file=str(tmp_path / "classes.txt"))
    with pytest.raises(DatasetError, match=r"boxes\.csv:2: class 'wolf' is not one of"):
        validate_dataset(name)


@pytest.mark.parametrize(
    "row, message",
    [
        ("a.jpg,1,1,9\n", "expected 6 fields"),
        ("a.jpg,1,1,,9,dog\n", "all four of x1,y1,x2,y2"),
        ("a.jpg,1,one,9,9,dog\n", "expected numeric"),
        ("a.jpg,1,1,9,9,\n", "without a class name"),
    ],
)
def test_csv_malformed_row(new_name, tmp_path, row, message):
    _image(tmp_path / "a.jpg")
    (tmp_path / "boxes.csv").write_text("a.jpg,1,1,9,9,dog\n" + row)
    name = register_csv_dataset(new_name("csv"), str(tmp_path / "boxes.csv"))
    with pytest.raises(DatasetError, match=rf"boxes\.csv:2: .*{message}"):
        validate_dataset(name)


def test_classes_file_errors(tmp_path):
    (tmp_path / "twice.txt").write_text("dog\ncat\ndog\n")
    with pytest.raises(DatasetError, match=r"twice\.txt:3: class 'dog' is listed twice"):
        read_classes_file(str(tmp_path / "twice.txt"))
    (tmp_path / "mixed.txt").write_text("dog,0\ncat\n")
    with pytest.raises(DatasetError, match=r"mixed\.txt: expected every line"):
        read_classes_file(str(tmp_path / "mixed.txt"))


# --- images -----------------------------------------------------------------------------


def test_missing_image_names_the_file(new_name, tmp_path):
    root = _voc(tmp_path / "voc", {"a": [("dog", (1, 1, 9, 9))], "b": [("dog", (1, 1, 9, 9))]})
    (root / "JPEGImages" / "b.jpg").unlink()
    name = register_voc_dataset(new_name("voc"), str(root))
    with pytest.raises(DatasetError, match=r"Image file not found for .*b\.xml: expected .*b\.jpg"):
        validate_dataset(name)


def test_missing_csv_image_names_the_file(new_name, tmp_path):
    (tmp_path / "boxes.csv").write_text("gone.jpg,1,1,9,9,dog\n")
    name = register_csv_dataset(new_name("csv"), str(tmp_path / "boxes.csv"))
    with pytest.raises(DatasetError, match=r"Image file not found: .*gone\.jpg .*boxes\.csv"):
        validate_dataset(name)


def test_corrupt_image_names_the_file(new_name, tmp_path):
    _image(tmp_path / "good.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"this is not an image at all" * 10)
    (tmp_path / "boxes.csv").write_text("good.jpg,1,1,9,9,dog\nbad.jpg,1,1,9,9,dog\n")
    name = register_csv_dataset(new_name("csv"), str(tmp_path / "boxes.csv"))
    with pytest.raises(DatasetError, match=r"Cannot read image .*bad\.jpg"):
        validate_dataset(name)


def test_truncated_image_is_found_by_its_end_and_read(new_name, tmp_path, caplog):
    noise = Image.effect_noise((200, 150), 64).convert("RGB")  # incompressible: a long body
    noise.save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "boxes.csv").write_text("cut.jpg,1,1,9,9,dog\n")
    name = register_csv_dataset(new_name("csv"), str(tmp_path / "boxes.csv"))
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.data"):
        summary = validate_dataset(name)
    assert summary.num_images == 1 and summary.truncated_images == [str(tmp_path / "cut.jpg")]
    assert [w for w in _warnings(caplog) if "truncated" in w and "cut.jpg" in w]
    assert validate_dataset(name, decode_images=True).truncated_images == [  # not twice
        str(tmp_path / "cut.jpg")]


def test_png_named_jpg_is_read_by_content(new_name, tmp_path, caplog):
    _image(tmp_path / "liar.jpg", size=(64, 48), image_format="PNG")
    (tmp_path / "boxes.csv").write_text("liar.jpg,1,1,9,9,dog\n")
    name = register_csv_dataset(new_name("csv"), str(tmp_path / "boxes.csv"))
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.data"):
        summary = validate_dataset(name)
    assert summary.format_mismatches == 1
    assert any("liar.jpg" in w and "PNG" in w for w in _warnings(caplog))
    record = DatasetCatalog.get(name)[0]
    assert (record["width"], record["height"]) == (64, 48)
    assert read_image(record["file_name"], format="BGR").shape == (48, 64, 3)  # as D2 reads it


def test_voc_size_that_disagrees_with_the_image(new_name, tmp_path, caplog):
    root = _voc(tmp_path / "voc", {"a": [("dog", (10, 10, 90, 70))]})
    _image(root / "JPEGImages" / "a.jpg", size=(50, 40))  # the XML says 100x80
    name = register_voc_dataset(new_name("voc"), str(root))
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.data"):
        summary = validate_dataset(name)
    assert summary.size_mismatches == 1
    assert summary.clipped_boxes == 1  # clipped to the real image, not the stated size
    record = DatasetCatalog.get(name)[0]
    assert (record["width"], record["height"]) == (50, 40)
    assert record["annotations"][0]["bbox"] == [10, 10, 50, 40]
    assert any("a.xml" in w and "100x80" in w and "50x40" in w for w in _warnings(caplog))


def test_exif_rotation_swaps_width_and_height(tmp_path):
    exif = Image.Exif()
    exif[274] = 6  # rotate 90 degrees: Detectron2's read_image returns a 60x100 image
    path = _image(tmp_path / "rotated.jpg", size=(100, 60), exif=exif.tobytes())
    header = read_image_header(str(path))
    assert (header.width, header.height) == (60, 100)
    assert read_image(str(path)).shape[:2] == (100, 60)


# --- boxes ------------------------------------------------------------------------------


def test_bad_boxes_are_dropped_or_clipped_with_warnings(new_name, tmp_path, caplog):
    root = _voc(tmp_path / "voc", {
        "good": [("dog", (10, 10, 50, 50))],
        "inverted": [("dog", (50, 10, 10, 50)), ("cat", (5, 5, 20, 20))],
        "flat": [("cat", (10, 10, 40, 10))],
        "edge": [("dog", (-3, 10, 101, 50))],
        "outside": [("dog", (120, 10, 150, 50))],
    })
    name = register_voc_dataset(new_name("voc"), str(root))
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.data"):
        summary = validate_dataset(name)
    assert summary.dropped_by_reason == {
        "zero-area": 1, "inverted": 1, "non-finite": 0, "outside image": 1
    }
    assert summary.clipped_boxes == 1
    assert summary.num_boxes == 3
    assert summary.images_without_boxes == 2  # flat, outside
    warnings = _warnings(caplog)
    assert any("inverted.xml" in w and "dropped inverted dog box" in w for w in warnings)
    assert any("flat.xml" in w and "zero-area" in w for w in warnings)
    assert any("outside.xml" in w and "outside image" in w for w in warnings)
    assert any("edge.xml" in w and "clipped" in w for w in warnings)
    assert not any("good.xml" in w for w in warnings)
    records = {Path(r["file_name"]).stem: r for r in DatasetCatalog.get(name)}
    assert records["edge"]["annotations"][0]["bbox"] == [0, 10, 100, 50]
    assert len(records["inverted"]["annotations"]) == 1


def test_warnings_are_capped(new_name, tmp_path, caplog, monkeypatch):
    from retinanet_ext.data import validation

    monkeypatch.setattr(validation, "MAX_WARNING_LINES", 3)
    root = _voc(tmp_path / "voc", {f"im{i}": [("dog", (5, 5, 5, 9))] for i in range(6)})
    name = register_voc_dataset(new_name("voc"), str(root))
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.data"):
        assert validate_dataset(name).dropped_boxes == 6
    warnings = _warnings(caplog)
    assert len(warnings) == 3 + 2  # three files, "... and 3 more", the summary line
    assert any("and 3 more files" in w for w in warnings)


# --- annotation files -------------------------------------------------------------------


def test_malformed_voc_xml_names_the_file(new_name, tmp_path):
    root = _voc(tmp_path / "voc", {"a": [("dog", (1, 1, 9, 9))]})
    (root / "Annotations" / "broken.xml").write_text("<annotation><object><name>dog</name>")
    _image(root / "JPEGImages" / "broken.jpg")
    name = register_voc_dataset(new_name("voc"), str(root))
    with pytest.raises(DatasetError, match=r"broken\.xml: malformed XML"):
        validate_dataset(name)


def test_voc_object_without_coordinates_names_the_file(new_name, tmp_path):
    root = _voc(tmp_path / "voc", {"a": [("dog", (1, 1, "", 9))]})
    name = register_voc_dataset(new_name("voc"), str(root))
    with pytest.raises(DatasetError, match=r"a\.xml: <object> number 1 \(dog\).*<xmax>"):
        validate_dataset(name)


def test_voc_unknown_class_names_the_file(new_name, tmp_path):
    root = _voc(tmp_path / "voc", {"a": [("dog", (1, 1, 9, 9))], "b": [("wolf", (1, 1, 9, 9))]})
    name = register_voc_dataset(new_name("voc"), str(root), class_names=["dog", "cat"])
    assert MetadataCatalog.get(name).thing_classes == ["dog", "cat"]
    with pytest.raises(DatasetError, match=r"b\.xml: .*class 'wolf', which is not one of"):
        validate_dataset(name)


def test_voc_like_layout_with_ids(new_name, tmp_path):
    root = tmp_path / "archive"
    for image_id in ("x1", "x2", "x3"):
        _image(root / "images" / f"{image_id}.png", image_format="PNG")
        _voc_xml(root / "annotations" / f"{image_id}.xml", [("mask", (1, 1, 9, 9))])
    name = register_voc_dataset(new_name("voc"), str(root), ids=["x3", "x1"])
    records = DatasetCatalog.get(name)
    assert [Path(r["file_name"]).name for r in records] == ["x3.png", "x1.png"]
    assert [r["image_id"] for r in records] == [0, 1]


def _coco(tmp_path: Path, data: dict | str) -> Path:
    _image(tmp_path / "images" / "a.jpg")
    path = tmp_path / "instances.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_malformed_coco_json_names_the_file(new_name, tmp_path):
    path = _coco(tmp_path, '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [')
    name = register_coco_dataset(new_name("coco"), str(path), str(tmp_path / "images"))
    with pytest.raises(DatasetError, match=r"instances\.json: not valid JSON"):
        validate_dataset(name)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("categories"), "a list under 'categories'"),
        (lambda d: d["annotations"][0].update(category_id=7), "category_id among"),
        (lambda d: d["annotations"][0].update(image_id=2), "to refer to an image"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2]), "a 'bbox' of 4 numbers"),
    ],
)
def test_invalid_coco_structure_names_the_file(new_name, tmp_path, change, message):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 3, "name": "dog"}],
    }
    change(data)
    path = _coco(tmp_path, data)
    name = register_coco_dataset(new_name("coco"), str(path), str(tmp_path / "images"))
    with pytest.raises(DatasetError, match=rf"instances\.json: not a valid COCO.*{message}"):
        validate_dataset(name)


def test_coco_without_image_size_takes_it_from_the_image(new_name, tmp_path):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 3, "bbox": [90, 1, 20, 5],
                         "iscrowd": 0}],
        "categories": [{"id": 3, "name": "dog"}],
    }
    name = register_coco_dataset(new_name("coco"), str(_coco(tmp_path, data)),
                                 str(tmp_path / "images"))
    summary = validate_dataset(name)
    assert summary.size_mismatches == 0 and summary.clipped_boxes == 1
    record = DatasetCatalog.get(name)[0]
    assert (record["width"], record["height"]) == (100, 80)
    assert record["annotations"][0]["bbox"] == [90, 1, 10, 5]  # still XYWH, clipped


# --- specs and splits -------------------------------------------------------------------


def test_parse_dataset_spec():
    spec = parse_dataset_spec("bccd_train=voc:/data/BCCD:train")
    assert (spec.name, spec.format, spec.arguments) == (
        "bccd_train", "voc", {"root": "/data/BCCD", "split": "train"})
    spec = parse_dataset_spec("fm=voc:/d/archive:train@train=0.8,val=0.2,seed=3")
    assert spec.arguments["split"] == "train@train=0.8,val=0.2,seed=3"
    spec = parse_dataset_spec("c=coco:/a/b.json:/a/images")
    assert spec.arguments == {"json_file": "/a/b.json", "image_root": "/a/images"}
    assert parse_dataset_spec("s=csv:x.csv").arguments == {"csv_file": "x.csv"}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("bccd", "no '='"),
        ("=voc:/data", "name ''"),
        ("my data=voc:/data", "name 'my data'"),
        ("d=tfrecord:/data", "unknown format 'tfrecord'"),
        ("d=voc", "needs arguments"),
        ("d=coco:only.json", "takes JSON_FILE:IMAGE_ROOT, found 1"),
        ("d=csv:a.csv:b.txt:c", "takes CSV_FILE\\[:CLASSES_FILE\\], found 3"),
        ("d=voc::train", "empty root"),
    ],
)
def test_bad_spec_is_a_clear_error(spec, message):
    with pytest.raises(DatasetError, match=rf"Malformed dataset spec .*{message}.*Expected NAME="):
        parse_dataset_spec(spec)


def test_spec_with_missing_files(new_name, tmp_path):
    with pytest.raises(DatasetError, match=r"CSV annotation file not found: .*nope\.csv"):
        register_dataset_spec(f"{new_name()}=csv:{tmp_path / 'nope.csv'}")
    root = _voc(tmp_path / "voc", {"a": [("dog", (1, 1, 9, 9))]})
    with pytest.raises(DatasetError, match="Malformed random split 'train@train=0.8,val'"):
        register_dataset_spec(f"{new_name()}=voc:{root}:train@train=0.8,val")


def test_make_split():
    ids = [f"im{i}" for i in range(10)]
    parts = make_split(ids, {"train": 0.7, "val": 0.3}, seed=1)
    assert (len(parts["train"]), len(parts["val"])) == (7, 3)
    assert sorted(parts["train"] + parts["val"]) == sorted(ids)
    assert parts == make_split(list(reversed(ids)), {"train": 0.7, "val": 0.3}, seed=1)
    assert parts != make_split(ids, {"train": 0.7, "val": 0.3}, seed=2)
    assert len(make_split(ids, {"tiny": 0.2})["tiny"]) == 2
    with pytest.raises(DatasetError, match="sum to 1.2"):
        make_split(ids, {"train": 0.7, "val": 0.5})
    with pytest.raises(DatasetError, match="duplicates"):
        make_split(["a", "a"], {"all": 1.0})


def test_validate_a_dataset_registered_elsewhere(tmp_path):
    """validate_dataset also reports on datasets registered directly with Detectron2."""
    path = _image(tmp_path / "a.jpg")
    name = "test_foreign_detectron2_registration"
    records = [{"file_name": str(path), "image_id": 0, "height": 80, "width": 100,
                "annotations": [{"bbox": [5, 5, 1, 9], "bbox_mode": BoxMode.XYXY_ABS,
                                 "category_id": 0, "iscrowd": 0}]}]
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).thing_classes = ["dog"]
    try:
        summary = validate_dataset(name)
        assert summary.dropped_by_reason["inverted"] == 1
        assert len(DatasetCatalog.get(name)[0]["annotations"]) == 1  # a report: unchanged
    finally:
        unregister_dataset(name)
