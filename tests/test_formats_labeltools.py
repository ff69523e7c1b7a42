"""The label tools' formats: LabelMe JSON, CVAT for images 1.1 XML and Label Studio JSON
exports, read through ``--dataset`` specs, and the CVAT and Label Studio writers, whose files
read back to the boxes written.

The files are small ones written here in each tool's layout (the field names and nesting
of LabelMe 5, CVAT 2 and Label Studio 1.x exports), with small images made here.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from retinanet_ext.data import (
    DATASET_FORMATS,
    DatasetError,
    LabeledImage,
    formats_help,
    parse_dataset_spec,
    register_dataset_spec,
    spec_grammar,
    validate_dataset,
    write_cvat_xml,
    write_labelstudio_json,
)
from retinanet_ext.data.labelstudio import MODEL_VERSION, image_candidates
from tests._data_helpers import blank_image, data_warnings

_image = blank_image
_warnings = data_warnings


def _boxes(name: str) -> list[list[tuple[int, list[float]]]]:
    """(category id, XYXY box) of each annotation, per record, of a registered dataset."""
    return [[(a["category_id"], [round(v, 4) for v in a["bbox"]]) for a in r["annotations"]]
            for r in DatasetCatalog.get(name)]


def _error(spec: str) -> str:
    with pytest.raises(DatasetError) as error:
        name = register_dataset_spec(spec)
        validate_dataset(name)
    return str(error.value)


def test_the_three_formats_are_in_the_table():
    for name, grammar in (
            ("labelme", "NAME=labelme:DIR[:classes=FILE]"),
            ("cvat", "NAME=cvat:XML_FILE[:images=DIR][:subset=SUBSET]"),
            ("labelstudio", "NAME=labelstudio:JSON_FILE[:images=DIR][:classes=FILE]")):
        assert name in DATASET_FORMATS and grammar in spec_grammar()
        assert DATASET_FORMATS[name].example in formats_help()
        parsed = parse_dataset_spec(DATASET_FORMATS[name].example)
        assert parsed.format == name
    assert parse_dataset_spec("a=cvat:x.xml:images=imgs:subset=Train").arguments == {
        "xml_file": "x.xml", "images_dir": "imgs", "subset": "Train"}


# --- LabelMe -----------------------------------------------------------------------------


def _labelme(path: Path, image_path: str, shapes: list, size=(64, 48), **extra) -> Path:
    data = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_path,
            "imageData": None, "imageHeight": size[1], "imageWidth": size[0], **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _shape(label: str, points: list, shape_type: str | None = "rectangle") -> dict:
    return {"label": label, "points": points, "group_id": None, "description": "",
            "shape_type": shape_type, "flags": {}, "mask": None}


def test_labelme_rectangles_polygons_and_image_paths(new_name, tmp_path, caplog):
    folder = tmp_path / "annotations"
    _image(tmp_path / "images" / "a.jpg")
    _image(tmp_path / "images" / "b.png")
    _image(folder / "c.jpg")
    _labelme(folder / "a.json", "../images/a.jpg", [
        _shape("dog", [[30, 40], [10, 5]]),  # corners in either order
        _shape("cat", [[2, 3], [20, 8], [11, 30]], "polygon"),
        _shape("cat", [[5, 5], [9, 9], [5, 9]], None),  # no shape_type: a polygon
        _shape("cat", [[4, 4]], "point"),
        _shape("__ignore__", [[1, 1], [8, 8]], "polygon"),  # LabelMe's reserved label
    ])
    _labelme(folder / "b.json", "..\\images\\b.png", [])  # Windows separators
    _labelme(folder / "c.json", "moved/away/c.jpg", [_shape("dog", [[0, 0], [64, 48]])])
    name = register_dataset_spec(f"{new_name('labelme')}=labelme:{folder}")
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.data"):
        summary = validate_dataset(name)
    assert summary.num_images == 3 and summary.thing_classes == ["cat", "dog"]
    assert summary.boxes_per_class == {"cat": 2, "dog": 2}
    assert _boxes(name) == [[(1, [10, 5, 30, 40]), (0, [2, 3, 20, 30]), (0, [5, 5, 9, 9])],
                            [], [(1, [0, 0, 64, 48])]]
    records = DatasetCatalog.get(name)
    assert [Path(r["file_name"]).name for r in records] == ["a.jpg", "b.png", "c.jpg"]
    warnings = " ".join(_warnings(caplog))
    assert f"2 polygon shapes (e.g. in {folder / 'a.json'}): their bounding boxes are used" \
        in warnings
    assert "1 '__ignore__'-labelled, 1 point shapes (e.g. in" in warnings
    assert "a.json): not boxes, skipped" in warnings


def test_labelme_classes_file_and_unknown_labels(new_name, tmp_path):
    _image(tmp_path / "a.jpg")
    _labelme(tmp_path / "a.json", "a.jpg", [_shape("person", [[1, 1], [9, 9]]),
                                            _shape("bus", [[2, 2], [8, 8]])])
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\nperson\nbus\n")  # LabelMe's labels.txt
    name = register_dataset_spec(f"{new_name('lm')}=labelme:{tmp_path}:classes={labels}")
    assert validate_dataset(name).thing_classes == ["person", "bus"]
    assert MetadataCatalog.get(name).thing_classes == ["person", "bus"]
    labels.write_text("person\n")
    message = _error(f"{new_name('lm')}=labelme:{tmp_path}:classes={labels}")
    assert "a.json: shape 2 (rectangle): label 'bus' is not one of the classes ['person']" \
        in message


def test_labelme_image_data_is_not_used(new_name, tmp_path):
    """The decision: images are read from imagePath; embedded imageData is never decoded."""
    _labelme(tmp_path / "a.json", "a.jpg", [], imageData="aGVsbG8=")
    message = _error(f"{new_name('lm')}=labelme:{tmp_path}")
    assert "a.json: image file not found: imagePath 'a.jpg'" in message
    assert "embedded 'imageData' is not used" in message
    _image(tmp_path / "a.jpg")
    assert validate_dataset(register_dataset_spec(
        f"{new_name('lm')}=labelme:{tmp_path}")).num_images == 1


@pytest.mark.parametrize(("content", "expected"), [
    ("{not json", "a.json: not valid JSON"),
    ('[{"shapes": []}]', "a.json: expected a LabelMe file"),
    ('{"shapes": [], "imagePath": 3}', "a.json: expected 'imagePath' to name the image file"),
    ('{"shapes": [], "imagePath": "a.jpg", "imageWidth": -4, "imageHeight": 48}',
     "a.json: expected 'imageWidth' to be a positive whole number of pixels, found -4"),
    ('{"shapes": [{"label": "", "points": []}], "imagePath": "a.jpg"}',
     "a.json: shape 1: expected a non-empty string 'label'"),
    ('{"shapes": [{"label": "cat", "shape_type": "rectangle", "points": [[1, 2]]}], '
     '"imagePath": "a.jpg"}', "a.json: shape 1 (label 'cat'): a rectangle needs 2 points"),
    ('{"shapes": [{"label": "cat", "shape_type": "rectangle", "points": [[1, "x"], [4, 4]]}],'
     ' "imagePath": "a.jpg"}', "a rectangle needs 2 points [x, y] of finite numbers"),
    ('{"shapes": [{"label": "cat", "shape_type": "rectangle", "points": [[1, 1], [90, 4]]}],'
     ' "imagePath": "a.jpg", "imageWidth": 64, "imageHeight": 48}',
     "a.json: shape 1 (label 'cat'): box [1, 1, 90, 4] is outside the 64x48 image (its x "
     "range is [1, 90], the image's [0, 64])"),
], ids=["json", "not_labelme", "image_path", "size", "label", "points", "numbers", "outside"])
def test_labelme_bad_files_are_errors_naming_file_and_shape(new_name, tmp_path, content,
                                                             expected):
    _image(tmp_path / "a.jpg")
    (tmp_path / "a.json").write_text(content)
    assert expected in _error(f"{new_name('lm')}=labelme:{tmp_path}")


def test_labelme_slightly_outside_is_clipped_not_refused(new_name, tmp_path):
    _image(tmp_path / "a.jpg")
    _labelme(tmp_path / "a.json", "a.jpg", [_shape("cat", [[-0.6, 2], [64.4, 20]])])
    summary = validate_dataset(register_dataset_spec(f"{new_name('lm')}=labelme:{tmp_path}"))
    assert summary.clipped_boxes == 1 and summary.num_boxes == 1


def test_labelme_empty_or_missing_folder(new_name, tmp_path):
    assert "No LabelMe files in" in _error(f"{new_name('lm')}=labelme:{tmp_path}")
    assert "LabelMe folder not found" in _error(f"{new_name('lm')}=labelme:{tmp_path}/nowhere")


# --- CVAT ----------------------------------------------------------------------------------

CVAT_TASK = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>7</id><name>shelf</name><size>3</size><mode>annotation</mode>
      <labels>
        <label><name>bottle</name><color>#fa3253</color><type>any</type><attributes/></label>
        <label><name>can</name><color>#33ddff</color><type>any</type><attributes/></label>
      </labels>
    </task>
    <dumped>2025-01-01 00:00:00.000000+00:00</dumped>
  </meta>
  <image id="0" name="a.jpg" width="64" height="48">
    <box label="can" source="manual" occluded="1" xtl="10.50" ytl="5.00" xbr="30.00" ybr="40.25"
         z_order="0"><attribute name="color">red</attribute></box>
    <polygon label="bottle" source="manual" occluded="0" points="2,3;20,8;11,30" z_order="0"/>
    <polyline label="bottle" source="manual" occluded="0" points="1,1;5,5" z_order="0"/>
    <tag label="can" source="manual"/>
  </image>
  <image id="1" name="sub/b.jpg" width="64" height="48">
    <box label="bottle" occluded="0" xtl="22" ytl="14" xbr="42" ybr="34" rotation="90"/>
  </image>
  <image id="2" name="frame_000002" width="64" height="48"/>
</annotations>
"""


def test_cvat_task_export(new_name, tmp_path, caplog):
    (tmp_path / "annotations.xml").write_text(CVAT_TASK)
    _image(tmp_path / "images" / "a.jpg")
    _image(tmp_path / "images" / "sub" / "b.jpg")
    _image(tmp_path / "images" / "frame_000002.png")  # a video task's frame name
    name = register_dataset_spec(f"{new_name('cvat')}=cvat:{tmp_path}/annotations.xml")
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.data"):
        summary = validate_dataset(name)
    assert summary.thing_classes == ["bottle", "can"]  # the label list's order
    assert _boxes(name) == [[(1, [10.5, 5, 30, 40.25]), (0, [2, 3, 20, 30])],
                            [(0, [22, 14, 42, 34])],  # a square turned 90 degrees
                            []]
    assert MetadataCatalog.get(name).image_root == str(tmp_path / "images")
    warnings = " ".join(_warnings(caplog))
    assert "1 polygon, 1 rotated box shapes: their bounding boxes are used" in warnings
    assert "1 polyline, 1 tag shapes: not boxes, skipped" in warnings


def test_cvat_project_export_subsets(new_name, tmp_path):
    xml = (CVAT_TASK.replace("<task>", "<project>").replace("</task>", "</project>")
           .replace('name="a.jpg"', 'name="a.jpg" subset="Train"')
           .replace('name="sub/b.jpg"', 'name="a.jpg" subset="Validation"')
           .replace('<image id="2" name="frame_000002" width="64" height="48"/>', ""))
    (tmp_path / "annotations.xml").write_text(xml)
    for subset in ("Train", "Validation"):
        _image(tmp_path / "images" / subset / "a.jpg")
    spec = f"cvat:{tmp_path}/annotations.xml:images={tmp_path}/images"
    name = register_dataset_spec(f"{new_name('cvat')}={spec}:subset=Validation")
    records = DatasetCatalog.get(name)
    assert len(records) == 1 and records[0]["file_name"].endswith("Validation/a.jpg")
    assert validate_dataset(register_dataset_spec(f"{new_name('cvat')}={spec}")).num_images == 2
    assert "no <image> of subset 'Test'; its subsets: ['Train', 'Validation']" in _error(
        f"{new_name('cvat')}={spec}:subset=Test")


@pytest.mark.parametrize(("change", "expected"), [
    (lambda x: x.replace("</annotations>", ""), "annotations.xml: malformed XML"),
    (lambda x: x.replace("<annotations>", "<annotation>").replace("</annotations>",
                                                                  "</annotation>"),
     "expected a CVAT <annotations> root element, found <annotation>"),
    (lambda x: x.replace('<image id="2" name="frame_000002" width="64" height="48"/>',
                         '<track id="0" label="can"/>'),
     "holds <track> elements (CVAT for video 1.1); export the task as 'CVAT for images 1.1'"),
    (lambda x: x.replace("<labels>", "<labelz>").replace("</labels>", "</labelz>"),
     "no label list: expected <meta><task><labels>"),
    (lambda x: x.replace('label="can" source="manual" occluded="1"',
                         'label="jar" source="manual" occluded="1"'),
     "<image> number 1 (a.jpg): <box> number 1 (label 'jar'): label 'jar' is not one of the "
     "labels in <meta>: ['bottle', 'can']"),
    (lambda x: x.replace('xtl="10.50"', 'xtl="ten"'),
     "<box> number 1 (label 'can'): expected numbers in xtl, ytl, xbr, ybr"),
    (lambda x: x.replace('xbr="30.00"', 'xbr="300"'),
     "<box> number 1 (label 'can'): box [10.5, 5, 300, 40.25] is outside the 64x48 image"),
    (lambda x: x.replace('points="2,3;20,8;11,30"', 'points="2,3;20"'),
     "<polygon> number 2 (label 'bottle'): expected points=\"x,y;x,y;x,y...\""),
    (lambda x: x.replace('name="sub/b.jpg" width="64"', 'name="sub/b.jpg" width="0"'),
     "<image> number 2 (sub/b.jpg): expected a name and positive whole width and height"),
    (lambda x: x.replace('name="a.jpg"', 'name="gone.jpg"'),
     "<image> 'gone.jpg': image file not found (looked for "),
], ids=["xml", "root", "track", "labels", "unknown_label", "number", "outside", "polygon", "size",
         "image"])
def test_cvat_bad_files_are_errors_naming_file_and_entry(new_name, tmp_path, change, expected):
    (tmp_path / "annotations.xml").write_text(change(CVAT_TASK))
    _image(tmp_path / "images" / "a.jpg")
    _image(tmp_path / "images" / "sub" / "b.jpg")
    _image(tmp_path / "images" / "frame_000002.png")
    message = _error(f"{new_name('cvat')}=cvat:{tmp_path}/annotations.xml")
    assert expected in message and "annotations.xml" in message


# --- Label Studio --------------------------------------------------------------------------


def _rect(x, y, w, h, label, *, size=(200, 100), rotation=0, **extra) -> dict:
    return {"id": "r1", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
            "original_width": size[0], "original_height": size[1], "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation,
                      "rectanglelabels": [label]}, **extra}


def _task(url: str, results: list, **extra) -> dict:
    return {"id": 1, "data": {"image": url}, "annotations": [
        {"id": 10, "result": results, "was_cancelled": False, "ground_truth": False,
         "created_at": "2024-01-30T02:40:43.893565Z"}], "predictions": [], **extra}


def test_labelstudio_percent_boxes_and_image_urls(new_name, tmp_path, caplog):
    images = tmp_path / "images"
    for path in ("dog.jpg", "sub/cat.png", "bird.jpg", "fish.jpg", "3f2a9c1d-owl.jpg"):
        _image(images / path, (200, 100))
    polygon = {"id": "p", "type": "polygonlabels", "original_width": 200,
               "original_height": 100,
               "value": {"points": [[10, 20], [50, 5], [30, 60]], "polygonlabels": ["cat"]}}
    tasks = [
        _task("/data/upload/3/8bd1e2f0-dog.jpg", [_rect(10, 20, 30, 40, "dog"), polygon,
                                                  {"type": "choices", "value": {}}]),
        _task("/data/local-files/?d=sub/cat.png", [_rect(0, 0, 100, 100, "cat")]),
        _task("https://example.com/data/bird.jpg?token=1", [
            _rect(25, 10, 20, 20, "dog", rotation=90)]),  # turned about its top-left corner
        {"id": 4, "data": {"image": "s3://bucket/fish.jpg"}, "annotations": [],
         "predictions": [{"model_version": "v1", "score": 0.5,
                          "result": [_rect(50, 50, 10, 10, "cat", score=0.5)]}]},
        {"id": 5, "data": {"img": "/data/upload/3/3f2a9c1d-owl.jpg"}, "annotations": []},
    ]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    name = register_dataset_spec(
        f"{new_name('ls')}=labelstudio:{tmp_path}/export.json:images={images}")
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.data"):
        summary = validate_dataset(name)
    assert summary.thing_classes == ["cat", "dog"] and summary.num_images == 5
    assert _boxes(name) == [
        [(1, [20, 20, 80, 60]), (0, [20, 5, 100, 60])],
        [(0, [0, 0, 200, 100])],
        [(1, [30, 10, 50, 50])],  # 40 x 20 px at (50, 10), turned 90 degrees clockwise
        [(0, [100, 50, 120, 60])],
        [],
    ]
    assert [Path(r["file_name"]).relative_to(images).as_posix()
            for r in DatasetCatalog.get(name)] == [
        "dog.jpg", "sub/cat.png", "bird.jpg", "fish.jpg", "3f2a9c1d-owl.jpg"]
    warnings = " ".join(_warnings(caplog))
    assert "1 polygon, 1 rotated rectangle results: their bounding boxes are used" in warnings
    assert "1 choices results: not boxes, skipped" in warnings
    assert "1 tasks without annotations: their first prediction" in warnings
    assert "1 tasks with neither annotations nor predictions: images without objects" \
        in warnings


def test_labelstudio_chooses_one_annotation_per_task(new_name, tmp_path):
    _image(tmp_path / "a.jpg", (100, 100))
    annotation = {"was_cancelled": False, "ground_truth": False}
    task = {"data": {"image": "/data/upload/1/a.jpg"}, "annotations": [
        {**annotation, "created_at": "2022-12-27T13:37:15Z", "result": [_rect(0, 0, 10, 10, "b",
                                                                              size=(100, 100))]},
        {**annotation, "created_at": "2022-12-27T13:36:25Z", "result": [_rect(0, 0, 20, 20, "a",
                                                                              size=(100, 100))]},
        {**annotation, "created_at": "2023-01-01T00:00:00Z", "was_cancelled": True,
         "result": [_rect(0, 0, 30, 30, "c", size=(100, 100))]},
    ]}
    (tmp_path / "export.json").write_text(json.dumps([task]))
    name = register_dataset_spec(f"{new_name('ls')}=labelstudio:{tmp_path}/export.json")
    assert _boxes(name) == [[(0, [0, 0, 10, 10])]]  # the latest one not cancelled
    task["annotations"][1]["ground_truth"] = True
    (tmp_path / "export.json").write_text(json.dumps(task))  # one task object, not a list
    name = register_dataset_spec(f"{new_name('ls')}=labelstudio:{tmp_path}/export.json")
    assert _boxes(name) == [[(0, [0, 0, 20, 20])]]  # the one marked ground truth


def test_labelstudio_size_from_the_image_when_not_stated(new_name, tmp_path):
    _image(tmp_path / "a.jpg", (50, 40))
    result = _rect(10, 10, 50, 50, "a")
    del result["original_width"], result["original_height"]
    (tmp_path / "export.json").write_text(json.dumps([_task("a.jpg", [result])]))
    name = register_dataset_spec(f"{new_name('ls')}=labelstudio:{tmp_path}/export.json")
    assert _boxes(name) == [[(0, [5, 4, 30, 24])]]


def test_labelstudio_url_mapping():
    assert image_candidates("/data/upload/12/8bd1e2f0-my photo.jpg") == [
        "8bd1e2f0-my photo.jpg", "my photo.jpg"]
    assert image_candidates("/data/local-files/?d=data%2Fimg+1.jpg") == [
        "data/img+1.jpg", "img+1.jpg"]
    assert image_candidates("gs://bucket/x/y.png") == ["x/y.png", "y.png"]
    assert image_candidates("images/a.jpg") == ["images/a.jpg", "a.jpg"]


@pytest.mark.parametrize(("content", "expected"), [
    ("[{", "export.json: not valid JSON"),
    ('{"tasks": []}', "expected a Label Studio JSON export: a list of tasks"),
    ("[]", "export.json: the export holds no tasks"),
    ('[{"data": {"text": 1}}]', "export.json: task 1: expected 'data' with the image URL"),
    ('[{"id": 7, "data": {"image": "a.jpg"}, "annotations": {}}]',
     "export.json: task 1 (id 7): expected 'annotations' to be a list"),
    (json.dumps([_task("a.jpg", [_rect(10, 10, "x", 5, "a")])]),
     "task 1 (id 1): result 1 (label 'a'): expected numbers (percent) in value.x, y, width, "
     "height"),
    (json.dumps([_task("a.jpg", [_rect(90, 10, 20, 5, "a")])]),
     "result 1 (label 'a'): box [90, 10, 110, 15] is outside the image (in percent) (its x "
     "range is [90, 110], the image's [0, 100])"),
    (json.dumps([_task("a.jpg", [{**_rect(1, 1, 5, 5, "a"), "value": {
        "x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": ["a", "b"]}}])]),
     "result 1: expected one label in value.rectanglelabels, found [\"a\", \"b\"]"),
    (json.dumps([_task("/data/upload/1/0a1b2c3d-gone.jpg", [])]),
     "task 1 (id 1): image '/data/upload/1/0a1b2c3d-gone.jpg' not found (looked for "),
], ids=["json", "not_a_list", "no_tasks", "no_image", "annotations", "number", "outside",
         "two_labels", "image"])
def test_labelstudio_bad_files_are_errors_naming_file_and_entry(new_name, tmp_path, content,
                                                                expected):
    _image(tmp_path / "a.jpg")
    (tmp_path / "export.json").write_text(content)
    message = _error(f"{new_name('ls')}=labelstudio:{tmp_path}/export.json")
    assert expected in message and "export.json" in message


def test_labelstudio_unknown_label_with_classes_file(new_name, tmp_path):
    _image(tmp_path / "a.jpg")
    (tmp_path / "export.json").write_text(json.dumps([_task("a.jpg", [_rect(1, 1, 5, 5, "a"),
                                                                      _rect(1, 1, 9, 9, "z")])]))
    (tmp_path / "classes.txt").write_text("a\nb\n")
    message = _error(f"{new_name('ls')}=labelstudio:{tmp_path}/export.json:"
                     f"classes={tmp_path}/classes.txt")
    assert "task 1 (id 1): result 2 (rectanglelabels): label 'z' is not one of the classes " \
           "['a', 'b']" in message


# --- the writers ---------------------------------------------------------------------------


def _labeled_images(tmp_path: Path, scores: bool) -> list[LabeledImage]:
    rng = np.random.default_rng(0)
    images = []
    for index, (folder, size) in enumerate([("left", (97, 61)), ("right", (200, 100)),
                                            ("right", (33, 45))]):
        path = _image(tmp_path / "photos" / folder / f"img {index}.jpg", size)
        count = (5, 0, 3)[index]
        corners = rng.uniform(0, 1, (count, 2)) * np.array(size) * 0.6
        sides = rng.uniform(0.05, 0.4, (count, 2)) * np.array(size)
        images.append(LabeledImage(
            file_name=str(path), width=size[0], height=size[1],
            boxes=np.concatenate([corners, corners + sides], axis=1),
            class_ids=rng.integers(0, 3, count),
            scores=rng.uniform(0.05, 1, count) if scores else None))
    return images


def _assert_read_back(name: str, images: list[LabeledImage]) -> None:
    records = DatasetCatalog.get(name)
    assert [Path(r["file_name"]) for r in records] == [Path(i.file_name) for i in images]
    for record, image in zip(records, images, strict=True):
        boxes = np.array([a["bbox"] for a in record["annotations"]]).reshape(-1, 4)
        np.testing.assert_allclose(boxes, image.boxes, atol=1e-3, rtol=0)
        assert [a["category_id"] for a in record["annotations"]] == image.class_ids.tolist()


@pytest.mark.parametrize("scores", [True, False], ids=["detections", "ground_truth"])
def test_cvat_writer_round_trip(new_name, tmp_path, scores):
    images = _labeled_images(tmp_path, scores)
    path = write_cvat_xml(images, ["apple", "pear", "plum"], str(tmp_path / "out" / "a.xml"))
    assert path == str(tmp_path / "out" / "a.xml")
    text = Path(path).read_text()
    assert '<image id="0" name="left/img 0.jpg" width="97" height="61">' in text
    assert ('source="auto"' in text and 'score="' in text) == scores
    name = register_dataset_spec(f"{new_name('cvat')}=cvat:{path}:images={tmp_path}/photos")
    assert validate_dataset(name).thing_classes == ["apple", "pear", "plum"]
    _assert_read_back(name, images)


def test_labelstudio_writer_round_trip_as_predictions(new_name, tmp_path):
    images = _labeled_images(tmp_path, scores=True)
    path = write_labelstudio_json(images, ["apple", "pear", "plum"],
                                  str(tmp_path / "tasks.json"))
    tasks = json.loads(Path(path).read_text())
    assert [t["data"]["image"] for t in tasks] == [
        "/data/local-files/?d=left/img%200.jpg", "/data/local-files/?d=right/img%201.jpg",
        "/data/local-files/?d=right/img%202.jpg"]
    prediction = tasks[0]["predictions"][0]
    assert prediction["model_version"] == MODEL_VERSION and "annotations" not in tasks[0]
    assert prediction["score"] == pytest.approx(images[0].scores.mean())
    first = prediction["result"][0]
    assert first["score"] == pytest.approx(images[0].scores[0])
    assert (first["type"], first["from_name"], first["to_name"]) == (
        "rectanglelabels", "label", "image")
    assert first["value"]["x"] == pytest.approx(images[0].boxes[0, 0] / 97 * 100)
    assert tasks[1]["predictions"][0]["result"] == []
    name = register_dataset_spec(
        f"{new_name('ls')}=labelstudio:{path}:images={tmp_path}/photos")
    # classes are the labels found, sorted; here all three occur
    assert validate_dataset(name).thing_classes == ["apple", "pear", "plum"]
    _assert_read_back(name, images)


def test_labelstudio_writer_ground_truth_and_url_prefix(new_name, tmp_path):
    images = _labeled_images(tmp_path, scores=False)
    path = write_labelstudio_json(images, ["apple", "pear", "plum"], str(tmp_path / "t.json"),
                                  image_url_prefix="/data/local-files/?d=shop/photos/")
    tasks = json.loads(Path(path).read_text())
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=shop/photos/left/img%200.jpg"
    assert "predictions" not in tasks[0] and len(tasks[0]["annotations"]) == 1
    name = register_dataset_spec(
        f"{new_name('ls')}=labelstudio:{path}:images={tmp_path}/photos")
    _assert_read_back(name, images)  # the URL's path, less its first folders, under DIR


def test_writers_refuse_class_ids_outside_the_names(tmp_path):
    image = LabeledImage(str(tmp_path / "a.jpg"), 10, 10, np.array([[1, 1, 5, 5]]),
                         np.array([3]))
    with pytest.raises(ValueError, match="class ids \\[3\\] are not indices into the 2"):
        write_cvat_xml([image], ["a", "b"], str(tmp_path / "a.xml"))
    with pytest.raises(ValueError, match="class ids \\[3\\]"):
        write_labelstudio_json([image], ["a", "b"], str(tmp_path / "a.json"))


def test_labeled_image_checks_its_arrays():
    image = LabeledImage("a.jpg", 10, 10, [[1, 2, 3, 4]], [0], [0.5])
    assert image.boxes.shape == (1, 4) and image.class_ids.dtype == np.int64
    assert len(image) == 1
    with pytest.raises(ValueError, match="1 boxes but 2 class ids"):
        LabeledImage("a.jpg", 10, 10, np.zeros((1, 4)), np.array([0, 1]))
    with pytest.raises(ValueError, match="1 boxes but 0 scores"):
        LabeledImage("a.jpg", 10, 10, np.zeros((1, 4)), np.array([0]), np.array([]))


@pytest.mark.once
def test_bench_formats_writes_its_table(tmp_path):
    """docs/benchmarks.md's loading benchmark, on 12 images: plumbing, not speed."""
    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "formats.md"
    result = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "bench_formats.py"), "--images", "12",
         "--repeats", "1", "--max-ratio", "1000", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = out.read_text()
    assert "| machine |" in table and "detectron2 " in table and "12 images of 64x48" in table
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert list(rows) == ["coco", "labelme", "cvat", "labelstudio"]
    assert len({(row["images"], row["boxes"]) for row in rows.values()}) == 1  # the same data
    for name, row in rows.items():
        assert f"| {name} | 12 | {row['boxes']} | {row['seconds']:.3f} |" in table
