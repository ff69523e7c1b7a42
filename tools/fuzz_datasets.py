#!/usr/bin/env python
"""Fuzz the dataset loaders: seeded mutations of annotation files and damaged images, each
run through the ``--check-data`` validation. Every case must end in a clear error or a
warning naming a file, or be accepted as valid; a traceback (any exception other than
``DatasetError``) is a bug.

    python tools/fuzz_datasets.py                      # 200 cases per format, seed 0
    python tools/fuzz_datasets.py --cases 20 --seed 3  # a sample (tests/test_fuzz_datasets.py)
    python tools/fuzz_datasets.py --formats coco csv --keep-failures out/

Formats are those of :data:`FUZZ_TARGETS` that ``retinanet_ext.data`` registers (COCO JSON,
Pascal VOC XML, CSV, YOLO, LabelMe JSON, CVAT XML, Label Studio JSON): a target is a
function writing a small valid dataset plus its structural mutations; to fuzz a new format,
add one. Every case also may get byte-level
damage (truncation, garbage, NUL bytes, UTF-16/Latin-1 re-encoding, a BOM, emptiness).
Images: 0 bytes, truncated JPEG/PNG, PNG content named .jpg, 1x1, CMYK, 16-bit, grayscale,
text named .png. Prints one table row per format; exit status 1 if any traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import math
import random
import shutil
import sys
import tempfile
import traceback
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BAD_VALUES = [None, "", "x", "12abc", -1, -1e9, 0, 1e30, 2**63, math.nan, math.inf, -math.inf,
              [], {}, True, "NaN", "1,5", 3.7, "\u00e9\u00e8", "\x00"]
CLASSES = ["cat", "dog"]


@dataclass
class Base:
    """A valid dataset: its ``--dataset`` spec fields and the annotation files to mutate."""

    fields: list[str]
    files: list[Path]
    images: list[Path]


@dataclass
class FuzzTarget:
    name: str
    build: Callable[[Path], Base]
    mutate: Callable[[random.Random, Path, str], str]  # structural: (rng, file, text) -> text


@dataclass
class Outcome:
    kind: str  # "error", "warning", "accepted", "traceback"
    names_file: bool = True
    detail: str = ""


@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)
    unnamed: list[str] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# Images and base datasets
# ---------------------------------------------------------------------------------------


def write_image(path: Path, size: tuple[int, int] = (64, 48), mode: str = "RGB",
                image_format: str | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"RGB": (120, 30, 200), "CMYK": (10, 20, 30, 40), "L": 128, "I;16": 40000}[mode]
    Image.new(mode, size, color).save(path, format=image_format)
    return path


BOXES = [[[4, 4, 30, 20, 0], [20, 10, 60, 40, 1]], [[10, 10, 40, 40, 1]], []]  # XYXY, class


def build_coco(root: Path) -> Base:
    images = [write_image(root / "images" / f"{i}.jpg") for i in range(3)]
    data = {
        "images": [{"id": i + 1, "file_name": p.name, "width": 64, "height": 48}
                   for i, p in enumerate(images)],
        "annotations": [],
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)],
    }
    for i, boxes in enumerate(BOXES):
        for x0, y0, x1, y1, k in boxes:
            data["annotations"].append({
                "id": len(data["annotations"]) + 1, "image_id": i + 1, "category_id": k + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0})
    json_file = root / "annotations.json"
    json_file.write_text(json.dumps(data))
    return Base([str(json_file), str(root / "images")], [json_file], images)


def build_voc(root: Path) -> Base:
    images = [write_image(root / "JPEGImages" / f"img{i}.jpg") for i in range(3)]
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("img0\nimg1\nimg2\n")
    files = []
    for i, boxes in enumerate(BOXES):
        objects = "".join(
            f"<object><name>{CLASSES[k]}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for x0, y0, x1, y1, k in boxes)
        xml = (f"<annotation><folder>JPEGImages</folder><filename>img{i}.jpg</filename><size>"
               f"<width>64</width><height>48</height><depth>3</depth></size>{objects}"
               f"</annotation>")
        path = root / "Annotations" / f"img{i}.xml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(xml)
        files.append(path)
    return Base([str(root), "train"], files, images)


def build_csv(root: Path) -> Base:
    images = [write_image(root / f"{i}.jpg") for i in range(3)]
    rows = [f"{images[i].name},{x0},{y0},{x1},{y1},{CLASSES[k]}"
            for i, boxes in enumerate(BOXES) for x0, y0, x1, y1, k in boxes]
    rows.append(f"{images[2].name},,,,,")
    csv_file = root / "labels.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    return Base([str(csv_file)], [csv_file], images)


def build_yolo(root: Path) -> Base:
    images = [write_image(root / "images" / "train" / f"{i}.jpg") for i in range(3)]
    labels = []
    for i, boxes in enumerate(BOXES):
        path = root / "labels" / "train" / f"{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(
            f"{k} {(x0 + x1) / 128:.4f} {(y0 + y1) / 96:.4f} {(x1 - x0) / 64:.4f} "
            f"{(y1 - y0) / 48:.4f}\n" for x0, y0, x1, y1, k in boxes))
        labels.append(path)
    data_yaml = root / "data.yaml"
    data_yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/train\n"
                         f"nc: 2\nnames: {json.dumps(CLASSES)}\n")
    return Base([str(data_yaml), "train"], [*labels, data_yaml], images)


def build_labelme(root: Path) -> Base:
    images = [write_image(root / f"{i}.jpg") for i in range(3)]
    files = []
    for i, boxes in enumerate(BOXES):
        shapes = [{"label": CLASSES[k], "points": [[x0, y0], [x1, y1]], "group_id": None,
                   "shape_type": "rectangle", "flags": {}} for x0, y0, x1, y1, k in boxes]
        path = root / f"{i}.json"
        path.write_text(json.dumps({"version": "5.4.1", "flags": {}, "shapes": shapes,
                                    "imagePath": images[i].name, "imageData": None,
                                    "imageHeight": 48, "imageWidth": 64}))
        files.append(path)
    return Base([str(root)], files, images)


def build_cvat(root: Path) -> Base:
    images = [write_image(root / "images" / f"{i}.jpg") for i in range(3)]
    labels = "".join(f"<label><name>{n}</name><type>any</type><attributes/></label>"
                     for n in CLASSES)
    body = "".join(
        f'<image id="{i}" name="{i}.jpg" width="64" height="48">' + "".join(
            f'<box label="{CLASSES[k]}" occluded="0" xtl="{x0}" ytl="{y0}" xbr="{x1}" '
            f'ybr="{y1}" z_order="0"/>' for x0, y0, x1, y1, k in boxes)
        + "</image>" for i, boxes in enumerate(BOXES))
    xml_file = root / "annotations.xml"
    xml_file.write_text(f"<annotations><version>1.1</version><meta><task><name>fuzz</name>"
                        f"<labels>{labels}</labels></task></meta>{body}</annotations>")
    return Base([str(xml_file)], [xml_file], images)


def build_labelstudio(root: Path) -> Base:
    images = [write_image(root / "images" / name) for name in
              ("0a1b2c3d-0.jpg", "1.jpg", "2.jpg")]
    urls = ["/data/upload/1/0a1b2c3d-0.jpg", "/data/local-files/?d=images/1.jpg",
            "https://example.com/2.jpg"]
    tasks = []
    for i, boxes in enumerate(BOXES):
        results = [{"id": f"r{n}", "type": "rectanglelabels", "from_name": "label",
                    "to_name": "image", "original_width": 64, "original_height": 48,
                    "value": {"x": x0 / 64 * 100, "y": y0 / 48 * 100,
                              "width": (x1 - x0) / 64 * 100, "height": (y1 - y0) / 48 * 100,
                              "rotation": 0, "rectanglelabels": [CLASSES[k]]}}
                   for n, (x0, y0, x1, y1, k) in enumerate(boxes)]
        tasks.append({"id": i + 1, "data": {"image": urls[i]},
                      "annotations": [{"id": i + 10, "result": results,
                                       "was_cancelled": False}], "predictions": []})
    json_file = root / "export.json"
    json_file.write_text(json.dumps(tasks))
    return Base([str(json_file), f"images={root / 'images'}"], [json_file], images)


# ---------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------


def _random_path(rng: random.Random, node: object, path: tuple = ()) -> list[tuple]:
    """Every (container path, key) in a JSON-like tree, to pick one from."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((path, key))
            found += _random_path(rng, value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.append((path, index))
            found += _random_path(rng, value, (*path, index))
    return found


def _at(tree: object, path: tuple) -> object:
    for key in path:
        tree = tree[key]
    return tree


def mutate_coco(rng: random.Random, path: Path, text: str) -> str:
    data = json.loads(text)
    for _ in range(rng.randint(1, 3)):
        spots = _random_path(rng, data)
        where, key = rng.choice(spots)
        parent = _at(data, where)
        operation = rng.choice(["value", "value", "drop", "duplicate", "bbox", "reference"])
        if operation == "value":
            parent[key] = copy.deepcopy(rng.choice(BAD_VALUES))
        elif operation == "drop":
            del parent[key]
        elif operation == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        elif operation == "bbox" and data.get("annotations") and isinstance(
                data["annotations"], list) and isinstance(data["annotations"][0], dict):
            data["annotations"][0]["bbox"] = rng.choice(
                [[1, 2, 3], [1, 2, 3, 4, 5], [-5, -5, 10, 10], [0, 0, 1e9, 1e9],
                 [math.nan, 0, 10, 10], [10, 10, -5, -5], ["1", "2", "3", "4"], "1 2 3 4",
                 [0, 0, 0, 0], [70, 50, 10, 10]])
        elif operation == "reference" and isinstance(data.get("annotations"), list) and \
                data["annotations"] and isinstance(data["annotations"][-1], dict):
            annotation = data["annotations"][-1]
            annotation[rng.choice(["category_id", "image_id"])] = rng.choice([0, 99, -1, 2.5])
        elif isinstance(data.get("images"), list) and data["images"] and isinstance(
                data["images"][0], dict):
            data["images"][0]["file_name"] = rng.choice(
                ["missing.jpg", "", "../../../etc/passwd", "/nonexistent/x.png", "sub/"])
    return json.dumps(data, allow_nan=True)


def mutate_voc(rng: random.Random, path: Path, text: str) -> str:
    raw = rng.random()
    if raw < 0.1:  # entity expansion, a DOCTYPE, an unclosed tag
        return rng.choice([
            '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "xxxxxxxxxx"><!ENTITY f "&e;&e;&e;'
            '&e;&e;&e;&e;&e;&e;&e;">]><annotation><filename>&f;</filename></annotation>',
            '<!DOCTYPE a SYSTEM "file:///etc/passwd"><annotation></annotation>',
            text.replace("</annotation>", ""), text.replace("<object>", "<object><object>", 1),
        ])
    root = ET.fromstring(text)
    for _ in range(rng.randint(1, 3)):
        elements = list(root.iter())
        element = rng.choice(elements)
        operation = rng.choice(["text", "text", "drop", "duplicate", "class"])
        if operation == "text":
            element.text = str(rng.choice(BAD_VALUES + ["-5", "1e9", "nan", "inf", "0x10"]))
        elif operation == "drop" and element is not root:
            parent = next(p for p in root.iter() if element in list(p))
            parent.remove(element)
        elif operation == "duplicate" and element is not root:
            parent = next(p for p in root.iter() if element in list(p))
            parent.append(copy.deepcopy(element))
        else:
            for name in root.iter("name"):
                name.text = rng.choice(["", "unknown_class", "Cat", " cat ", "\u732b"])
                break
    return ET.tostring(root, encoding="unicode")


def mutate_csv(rng: random.Random, path: Path, text: str) -> str:
    rows = [line.split(",") for line in text.splitlines()]
    for _ in range(rng.randint(1, 3)):
        row = rng.choice(rows)
        operation = rng.choice(["value", "value", "drop", "add", "duplicate", "header", "blank"])
        if operation == "value" and row:
            row[rng.randrange(len(row))] = str(rng.choice(
                BAD_VALUES + ["-5", "1e9", "nan", "inf", "missing.jpg", '"q,uote"', "9999"]))
        elif operation == "drop" and row:
            row.pop(rng.randrange(len(row)))
        elif operation == "add":
            row.append(rng.choice(["extra", "", "7"]))
        elif operation == "duplicate":
            rows.append(list(row))
        elif operation == "header":
            rows.insert(0, rng.choice([["filename", "xmin", "ymin", "xmax", "ymax", "class"],
                                       ["filename", "width", "height", "class", "xmin", "ymin",
                                        "xmax", "ymax"], ["a", "b"], ["filename", "filename"]]))
        else:
            rows.insert(rng.randrange(len(rows) + 1), [])
    return "\n".join(",".join(row) for row in rows) + "\n"


def mutate_yolo(rng: random.Random, path: Path, text: str) -> str:
    if path.suffix == ".yaml":
        return rng.choice([
            text.replace("nc: 2", "nc: 5"), text.replace("names:", "labels:"),
            text.replace('["cat", "dog"]', "cat"), text + "names: {0: a, 5: b}\n",
            text.replace("train: images/train", "train: nowhere/"),
            text + "evil: !!python/object/apply:os.system ['touch /tmp/yolo_pwned']\n",
            "train: [\n", text.replace("nc: 2", "nc: -1"), "- just\n- a list\n",
            text.replace('["cat", "dog"]', '["cat", null]'),
        ])
    lines = [line.split() for line in text.splitlines()] or [["0", "0.5", "0.5", "0.1", "0.1"]]
    for _ in range(rng.randint(1, 3)):
        line = rng.choice(lines)
        operation = rng.choice(["value", "value", "drop", "add", "duplicate", "blank"])
        if operation == "value" and line:
            line[rng.randrange(len(line))] = str(rng.choice(
                ["-1", "2", "99", "1.5", "a", "nan", "inf", "-0.5", "1.7", "1e30", "", "0x1"]))
        elif operation == "drop" and line:
            line.pop(rng.randrange(len(line)))
        elif operation == "add":
            line += [f"{rng.random():.3f}" for _ in range(rng.choice([1, 2, 3, 6]))]
        elif operation == "duplicate":
            lines.append(list(line))
        else:
            lines.append([])
    return "\n".join(" ".join(line) for line in lines) + "\n"


def _mutate_json_tree(rng: random.Random, data: object) -> None:
    """One generic edit of a JSON tree: a bad value, a dropped or a duplicated entry."""
    spots = _random_path(rng, data)
    if not spots:
        return
    where, key = rng.choice(spots)
    parent = _at(data, where)
    operation = rng.choice(["value", "value", "drop", "duplicate"])
    if operation == "value":
        parent[key] = copy.deepcopy(rng.choice(BAD_VALUES))
    elif operation == "drop":
        del parent[key]
    elif isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))


def _shapes(data: object, key: str) -> list[dict]:
    """The dicts of ``data[key]`` (LabelMe shapes), or of every task's first annotation's
    result (Label Studio), whatever survived earlier mutations."""
    if isinstance(data, dict) and isinstance(data.get(key), list):
        return [s for s in data[key] if isinstance(s, dict)]
    found = []
    for task in data if isinstance(data, list) else []:
        for annotation in (task.get(key) or []) if isinstance(task, dict) else []:
            result = annotation.get("result") if isinstance(annotation, dict) else None
            found += [r for r in result or [] if isinstance(r, dict)]
    return found


def mutate_labelme(rng: random.Random, path: Path, text: str) -> str:
    data = json.loads(text)
    for _ in range(rng.randint(1, 3)):
        operation = rng.choice(["tree", "tree", "points", "shape_type", "label", "image",
                                "size"])
        shapes = _shapes(data, "shapes")
        if operation == "points" and shapes:
            rng.choice(shapes)["points"] = rng.choice(
                [[[1, 2]], [[1, 2], [3]], [[0, 0], [1e9, 1e9]], [[-50, -50], [10, 10]],
                 [["1", "2"], ["30", "40"]], "1 2 3 4", [[math.nan, 0], [10, 10]],
                 [[5, 5], [5, 5]], [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]])
        elif operation == "shape_type" and shapes:
            rng.choice(shapes)["shape_type"] = rng.choice(
                ["rectangle", "polygon", "circle", "line", "point", "mask", None, "", 5,
                 "oriented_rectangle"])
        elif operation == "label" and shapes:
            rng.choice(shapes)["label"] = rng.choice(
                ["", "__ignore__", "Cat", " cat ", None, 3, "\u732b", "unknown_class"])
        elif operation == "image" and isinstance(data, dict):
            data["imagePath"] = rng.choice(["missing.jpg", "", "..\\..\\0.jpg",
                                            "/nonexistent/x.png", "sub/", None, "1.jpg"])
        elif operation == "size" and isinstance(data, dict):
            data[rng.choice(["imageWidth", "imageHeight"])] = rng.choice(
                [0, -5, "64", 1e30, 64.5, None, 1, 2**40])
        else:
            _mutate_json_tree(rng, data)
    return json.dumps(data, allow_nan=True)


def mutate_cvat(rng: random.Random, path: Path, text: str) -> str:
    if rng.random() < 0.2:  # entity expansion, a DOCTYPE, an unclosed tag, other shapes
        return rng.choice([
            '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "xxxxxxxxxx"><!ENTITY f "&e;&e;&e;'
            '&e;&e;&e;&e;&e;&e;&e;">]><annotations><image name="&f;"/></annotations>',
            '<!DOCTYPE a SYSTEM "file:///etc/passwd"><annotations></annotations>',
            text.replace("</annotations>", ""),
            text.replace("</image>", '<track id="0" label="cat"></track></image>', 1),
            text.replace("<box ", '<polygon points="2,3;20,8;11,30" ', 1),
            text.replace("<box ", '<polyline points="2,3;20,8" ', 1),
            text.replace('z_order="0"', 'rotation="30" z_order="0"', 1),
        ])
    root = ET.fromstring(text)
    for _ in range(rng.randint(1, 3)):
        elements = list(root.iter())
        element = rng.choice(elements)
        operation = rng.choice(["attribute", "attribute", "text", "drop", "duplicate",
                                "label"])
        if operation == "attribute" and element.attrib:
            element.set(rng.choice(sorted(element.attrib)), str(rng.choice(
                BAD_VALUES + ["-5", "1e9", "nan", "inf", "0x10", "1,2;3", "45"])))
        elif operation == "text":
            element.text = str(rng.choice(BAD_VALUES + ["", "dog", "cat"]))
        elif operation in ("drop", "duplicate") and element is not root:
            parent = next(p for p in root.iter() if element in list(p))
            if operation == "drop":
                parent.remove(element)
            else:
                parent.append(copy.deepcopy(element))
        else:
            for box in root.iter("box"):
                box.set("label", rng.choice(["", "unknown_class", "Cat", " cat ", "\u732b"]))
                break
    return ET.tostring(root, encoding="unicode")


def mutate_labelstudio(rng: random.Random, path: Path, text: str) -> str:
    data = json.loads(text)
    for _ in range(rng.randint(1, 3)):
        operation = rng.choice(["tree", "tree", "value", "type", "size", "url", "labels"])
        results = _shapes(data, "annotations")
        result = rng.choice(results) if results else None
        values = result.get("value") if result is not None else None
        if operation == "value" and isinstance(values, dict):
            values[rng.choice(["x", "y", "width", "height", "rotation", "points"])] = (
                rng.choice(BAD_VALUES + [150, -20, 99.5, 45, [[1, 2]], "50"]))
        elif operation == "type" and result is not None:
            result["type"] = rng.choice(["polygonlabels", "choices", "keypointlabels", None,
                                         "", 3, "rectangle"])
        elif operation == "size" and result is not None:
            result[rng.choice(["original_width", "original_height"])] = rng.choice(
                [0, -5, "64", 1e30, 64.5, None, 1, 2**40])
        elif operation == "labels" and isinstance(values, dict):
            values["rectanglelabels"] = rng.choice(
                [[], ["cat", "dog"], "cat", [None], ["Cat"], ["unknown_class"], [""]])
        elif operation == "url" and isinstance(data, list) and data and isinstance(
                data[0], dict) and isinstance(data[0].get("data"), dict):
            data[0]["data"]["image"] = rng.choice(
                ["/data/upload/9/ffffffff-missing.jpg", "", "/data/local-files/?d=",
                 "/data/local-files/?d=..%2F..%2Fetc%2Fpasswd", "s3://", "http://x/",
                 "C:\\images\\0.jpg", None, 5, "%zz"])
        else:
            _mutate_json_tree(rng, data)
    return json.dumps(data, allow_nan=True)


def damage_bytes(rng: random.Random, data: bytes) -> bytes:
    """Byte-level damage: truncation, garbage, NUL bytes, another encoding, a BOM, nothing."""
    operation = rng.choice(["truncate", "garbage", "nul", "utf16", "latin1", "bom", "empty",
                            "insert"])
    if operation == "truncate":
        return data[:rng.randrange(max(1, len(data)))]
    if operation == "garbage":
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    if operation == "nul":
        position = rng.randrange(len(data) + 1)
        return data[:position] + b"\x00" * rng.randint(1, 5) + data[position:]
    if operation == "utf16":
        return data.decode("utf-8", "replace").encode("utf-16")
    if operation == "latin1":
        return data.decode("utf-8", "replace").replace("a", "\u00e4", 3).encode("latin-1",
                                                                                "replace")
    if operation == "bom":
        return b"\xef\xbb\xbf" + data
    if operation == "empty":
        return b""
    position = rng.randrange(len(data) + 1)
    return data[:position] + bytes(rng.randrange(256) for _ in range(8)) + data[position:]


FUZZ_TARGETS = [
    FuzzTarget("coco", build_coco, mutate_coco),
    FuzzTarget("voc", build_voc, mutate_voc),
    FuzzTarget("csv", build_csv, mutate_csv),
    FuzzTarget("yolo", build_yolo, mutate_yolo),
    FuzzTarget("labelme", build_labelme, mutate_labelme),
    FuzzTarget("cvat", build_cvat, mutate_cvat),
    FuzzTarget("labelstudio", build_labelstudio, mutate_labelstudio),
]
"""What to fuzz; a target whose name ``retinanet_ext.data`` does not register is skipped."""


# ---------------------------------------------------------------------------------------
# Running the cases
# ---------------------------------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def check_case(spec: str, files: list[Path]) -> Outcome:
    """Register ``spec`` and run ``--check-data``'s validation on it (in this process)."""
    from retinanet_ext.data import DatasetError, check_data, register_dataset_spec
    from retinanet_ext.data.catalog import unregister_dataset

    name = spec.split("=", 1)[0]
    collect = _Collect()
    logger = logging.getLogger("retinanet_ext")
    logger.addHandler(collect)
    try:
        register_dataset_spec(spec)
        check_data([name], file=io.StringIO())
    except DatasetError as error:
        return Outcome("error", _names_a_file(str(error), files), str(error)[:300])
    except Exception:
        return Outcome("traceback", detail=traceback.format_exc())
    finally:
        logger.removeHandler(collect)
        unregister_dataset(name)
    if collect.messages:
        text = " ".join(collect.messages)
        return Outcome("warning", _names_a_file(text, files), text[:300])
    return Outcome("accepted")


def _names_a_file(text: str, files: list[Path]) -> bool:
    return any(p.name in text for p in files)


def run_target(target: FuzzTarget, cases: int, seed: int, work: Path,
               keep: Path | None) -> Tally:
    """``cases`` mutated copies of one annotation file each, checked one by one."""
    root = work / target.name
    base = target.build(root)
    originals = {p: p.read_bytes() for p in base.files}
    tally = Tally()
    for index in range(cases):
        rng = random.Random(f"{seed}-{target.name}-{index}")
        victim = rng.choice(base.files)
        original = originals[victim]
        try:
            text = target.mutate(rng, victim, original.decode())
            data = text.encode()
        except Exception:  # the mutation itself failed on an odd tree: damage bytes instead
            data = original
        if rng.random() < 0.3 or data == original:
            data = damage_bytes(rng, data)
        victim.write_bytes(data)
        spec = f"fuzz_{target.name}_{index}={target.name}:" + ":".join(base.fields)
        outcome = check_case(spec, [*base.files, *base.images])
        victim.write_bytes(original)
        tally.counts[outcome.kind] += 1
        case = f"case {index} ({victim.name})"
        if outcome.kind == "traceback":
            tally.tracebacks.append(f"{case}:\n{outcome.detail}")
        elif not outcome.names_file and outcome.kind in ("error", "warning"):
            tally.unnamed.append(f"{case}: {outcome.kind}: {outcome.detail}")
        if keep is not None and (outcome.kind == "traceback" or not outcome.names_file):
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"{target.name}_{index}_{victim.name}").write_bytes(data)
    return tally


def _truncated(path: Path, image_format: str) -> None:
    write_image(path, (64, 48), image_format=image_format)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


IMAGE_DAMAGE: dict[str, tuple[str, Callable[[Path], object]]] = {
    # what: (file suffix, how to write it)
    "0 bytes": (".jpg", lambda p: p.write_bytes(b"")),
    "truncated JPEG": (".jpg", lambda p: _truncated(p, "JPEG")),
    "truncated PNG": (".png", lambda p: _truncated(p, "PNG")),
    "PNG named .jpg": (".jpg", lambda p: write_image(p, (64, 48), image_format="PNG")),
    "1x1": (".jpg", lambda p: write_image(p, (1, 1))),
    "CMYK JPEG": (".jpg", lambda p: write_image(p, (64, 48), mode="CMYK")),
    "16-bit PNG": (".png", lambda p: write_image(p, (64, 48), mode="I;16")),
    "grayscale": (".jpg", lambda p: write_image(p, (64, 48), mode="L")),
    "text named .jpg": (".jpg", lambda p: p.write_text("this is not an image\n")),
    "JPEG header only": (".jpg", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")),
}


def run_images(work: Path) -> dict[str, Outcome]:
    """Each damaged image in place of the first image of a valid COCO dataset."""
    base = build_coco(work / "images")
    json_file = base.files[0]
    original = json_file.read_text()
    results = {}
    for index, (what, (suffix, damage)) in enumerate(IMAGE_DAMAGE.items()):
        victim = base.images[0].with_name(f"damaged_{index}{suffix}")
        damage(victim)
        data = json.loads(original)
        data["images"][0]["file_name"] = victim.name
        json_file.write_text(json.dumps(data))
        spec = f"fuzz_image_{index}=coco:" + ":".join(base.fields)
        results[what] = check_case(spec, [json_file, victim])
        victim.unlink()
    json_file.write_text(original)
    return results


def registered_targets(names: list[str] | None) -> list[FuzzTarget]:
    from retinanet_ext.data.formats import DATASET_FORMATS, get_format

    get_format("coco")  # loads the built-in formats
    return [t for t in FUZZ_TARGETS
            if t.name in DATASET_FORMATS and (not names or t.name in names)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=200, help="mutated files per format")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", nargs="*", help="only these formats")
    parser.add_argument("--keep-failures", type=Path, default=None,
                        help="copy the files of tracebacks and unnamed errors here")
    parser.add_argument("--verbose", action="store_true", help="print every traceback")
    args = parser.parse_args(argv)

    import retinanet_ext  # noqa: F401

    logging.getLogger("retinanet_ext").propagate = False  # the warnings are collected
    work = Path(tempfile.mkdtemp(prefix="fuzz_datasets_"))
    failed = False
    try:
        print("| format | files tried | errors | warnings | accepted as valid | tracebacks | "
              "error/warning not naming a file |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for target in registered_targets(args.formats):
            tally = run_target(target, args.cases, args.seed, work, args.keep_failures)
            c = tally.counts
            print(f"| {target.name} | {sum(c.values())} | {c['error']} | {c['warning']} | "
                  f"{c['accepted']} | {c['traceback']} | {len(tally.unnamed)} |", flush=True)
            for problem in tally.tracebacks[: None if args.verbose else 3]:
                print(problem, file=sys.stderr)
            for problem in tally.unnamed[:5]:
                print("not naming a file:", problem, file=sys.stderr)
            failed = failed or bool(tally.tracebacks) or bool(tally.unnamed)
        images = run_images(work)
        print("\n| damaged image | outcome | names the file |\n| --- | --- | --- |")
        for what, outcome in images.items():
            print(f"| {what} | {outcome.kind} | {outcome.names_file} |")
            if outcome.kind == "traceback":
                print(outcome.detail, file=sys.stderr)
        failed = failed or any(o.kind == "traceback" or not o.names_file
                               for o in images.values())
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
