"""LabelMe JSON (one file per image) as a registered Detectron2 dataset.

Every ``*.json`` in the folder (not its subfolders) is one image: ``imagePath`` names the
image, relative to the JSON file (Windows ``\\`` separators as LabelMe writes them on
Windows; an image not found there is looked for by its base name beside the JSON);
``imageWidth``/``imageHeight`` are the size the shapes refer to. ``imageData`` (the image
embedded as base64) is never decoded: the image file is what training reads, so a JSON
whose image file is missing is an error even when it embeds the image.

Shapes by ``shape_type``: ``rectangle`` (two opposite corners, in any order) is a box;
``polygon`` (also a shape without ``shape_type``, as older LabelMe writes them) and
``oriented_rectangle`` become their bounding boxes, with a note counting them; ``circle``,
``line``, ``linestrip``, ``point``, ``points`` and ``mask`` shapes, and shapes labelled
``__ignore__`` or ``_background_`` (LabelMe's reserved names), are skipped, with a note
counting them. Classes: the sorted labels of all files, or a classes file
(``classes=FILE``: one name a line; LabelMe's ``labels.txt`` works as it is, its
``__ignore__`` and ``_background_`` lines are left out), where any other label is an error.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from retinanet_ext.data.catalog import register_validated
from retinanet_ext.data.formats import DatasetFormat, SpecField, register_format
from retinanet_ext.data.label_tools import (
    RESERVED_LABELS,
    Box,
    Problems,
    as_size,
    box_annotation,
    class_ids,
    describe_tried,
    find_image,
    note_counts,
    outside_image,
    points_box,
    read_json,
    without_cyclic_gc,
)
from retinanet_ext.data.validation import SOURCE_KEY, DatasetError

BOX_SHAPES = {"rectangle": 2}
"""Shape types that are boxes, and their number of points."""
OUTLINE_SHAPES = {"polygon": 3, "oriented_rectangle": 4}
"""Shape types whose bounding box is used, and their least number of points."""


@dataclass(slots=True)
class LabelMeShape:
    label: str
    box: Box
    where: str


@dataclass
class LabelMeFile:
    """One parsed LabelMe JSON file."""

    path: str
    image_path: str
    width: int | None
    height: int | None
    shapes: list[LabelMeShape] = field(default_factory=list)


@dataclass
class LabelMeNotes:
    """What the files held that is noted, not refused: shapes by type, and a file of each."""

    outlines: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, counts: Counter, kind: str, path: str) -> None:
        counts[kind] += 1
        self.examples.setdefault(kind, path)

    def log(self, source: str) -> None:
        for counts, consequence in ((self.outlines, "their bounding boxes are used"),
                                    (self.skipped, "not boxes, skipped")):
            example = self.examples[min(counts)] if counts else None
            note_counts(source, counts, "shapes", consequence, example)


def _read_json(path: str, problems: Problems) -> Any:
    try:
        return read_json(path)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError
        problems.add(path, f"not valid JSON ({str(error)[:120]})")
    except OSError as error:
        problems.add(path, f"cannot be read ({error})")
    return None


def parse_labelme_file(path: str, problems: Problems,
                       notes: LabelMeNotes | None = None) -> LabelMeFile | None:
    """Parse one LabelMe JSON file; what is wrong goes to ``problems`` (``None``: unusable),
    what is noted to ``notes``."""
    data = _read_json(path, problems)
    if data is None:
        return None
    if type(data) is not dict or type(data.get("shapes")) is not list:
        problems.add(path, "expected a LabelMe file: a JSON object with a 'shapes' list and an "
                           "'imagePath'")
        return None
    image_path = data.get("imagePath")
    if type(image_path) is not str or not image_path.strip():
        problems.add(path, f"expected 'imagePath' to name the image file, found "
                           f"{image_path!r:.80}")
        return None
    sizes = {key: data.get(key) for key in ("imageWidth", "imageHeight")}
    width, height = as_size(sizes["imageWidth"]), as_size(sizes["imageHeight"])
    for key, value in sizes.items():
        if value is not None and as_size(value) is None:
            problems.add(path, f"expected '{key}' to be a positive whole number of pixels, "
                               f"found {value!r:.40}")
            return None
    # LabelMe reads it as PureWindowsPath(imagePath).as_posix(); pathlib costs 10 us a file
    parsed = LabelMeFile(path, image_path.replace("\\", "/"), width, height)
    notes = notes if notes is not None else LabelMeNotes()
    for number, shape in enumerate(data["shapes"], start=1):
        _parse_shape(parsed, number, shape, problems, notes)
    return parsed


def _parse_shape(parsed: LabelMeFile, number: int, shape: Any, problems: Problems,
                 notes: LabelMeNotes) -> None:
    label = shape.get("label") if type(shape) is dict else None
    if type(label) is not str or not label.strip():
        problems.add(f"{parsed.path}: shape {number}",
                     f"expected a non-empty string 'label', found {label!r:.40}"
                     if type(shape) is dict else
                     f"expected an object with 'label' and 'points', found "
                     f"{type(shape).__name__}")
        return
    if label in RESERVED_LABELS:
        notes.add(notes.skipped, f"{label!r}-labelled", parsed.path)
        return
    kind = shape.get("shape_type") or "polygon"
    least = (BOX_SHAPES.get(kind) or OUTLINE_SHAPES.get(kind)) if type(kind) is str else None
    if least is None:
        if type(kind) is str:
            notes.add(notes.skipped, kind[:40], parsed.path)
        else:
            problems.add(f"{parsed.path}: shape {number} (label {label!r})",
                         f"expected a string 'shape_type', found {kind!r:.40}")
        return
    points = shape.get("points")
    box = points_box(points)
    if box is None or len(points) < least or (kind in BOX_SHAPES and len(points) != least):
        count = "2" if kind in BOX_SHAPES else f"at least {least}"
        problems.add(f"{parsed.path}: shape {number} (label {label!r})",
                     f"a {kind} needs {count} points [x, y] of finite numbers, found "
                     f"{json.dumps(points)[:80]}")
        return
    outside = outside_image(box, parsed.width, parsed.height)
    if outside:
        problems.add(f"{parsed.path}: shape {number} (label {label!r})", outside)
        return
    if kind in OUTLINE_SHAPES:
        notes.add(notes.outlines, kind, parsed.path)
    parsed.shapes.append(LabelMeShape(label, box, f"shape {number} ({kind})"))


def list_labelme_files(folder: str) -> list[str]:
    """The ``*.json`` files of ``folder`` (not its subfolders), sorted."""
    with os.scandir(folder) as entries:
        return sorted(entry.path for entry in entries
                      if entry.name.lower().endswith(".json") and entry.is_file())


def _labelme_record(index: int, parsed: LabelMeFile, ids: dict[str, int],
                    problems: Problems) -> dict[str, Any] | None:
    json_folder = os.path.dirname(parsed.path)
    image, tried = find_image([json_folder],
                              [parsed.image_path, os.path.basename(parsed.image_path)])
    if image is None:
        problems.add(parsed.path, f"image file not found: imagePath {parsed.image_path!r} "
                                  f"(looked for {describe_tried(tried)}; an embedded "
                                  "'imageData' is not used)")
        return None
    record: dict[str, Any] = {"file_name": image, "image_id": index, "annotations": [],
                              SOURCE_KEY: parsed.path}
    if parsed.width and parsed.height:
        record["width"], record["height"] = parsed.width, parsed.height
    for shape in parsed.shapes:
        if shape.label not in ids:
            problems.add(f"{parsed.path}: {shape.where}",
                         f"label {shape.label!r} is not one of the classes {list(ids)}")
            continue
        record["annotations"].append(box_annotation(shape.box, ids[shape.label], shape.where))
    return record


def load_labelme_records(
    folder: str, classes_file: str | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read a folder of LabelMe JSON files into unvalidated Detectron2 dataset dicts.

    Returns:
        (records, thing_classes)

    Raises:
        DatasetError: the folder has no JSON file, or any file is malformed, names a
            missing image, has a shape outside its image or a label outside
            ``classes_file``; the message lists them by file and shape.
    """
    files = list_labelme_files(folder)
    if not files:
        raise DatasetError(f"No LabelMe files in {folder}: expected one .json file per image "
                           "(LabelMe saves them beside the images).")
    problems, notes = Problems(f"labelme: {folder}"), LabelMeNotes()
    parsed = [p for p in (parse_labelme_file(path, problems, notes) for path in files) if p]
    thing_classes, ids = class_ids((s.label for p in parsed for s in p.shapes), classes_file)
    records = [_labelme_record(i, p, ids, problems) for i, p in enumerate(parsed)]
    problems.raise_if_any()
    notes.log(f"labelme: {folder}")
    return [r for r in records if r is not None], thing_classes


def register_labelme_dataset(name: str, folder: str, classes_file: str | None = None) -> str:
    """Register a folder of LabelMe JSON files (see the module docstring) as ``name``.

    Args:
        name: the dataset name for ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        folder: the folder of the ``.json`` files.
        classes_file: class names, one a line (fixes the order and refuses other labels);
            default: the sorted labels found.

    Returns:
        ``name``.

    Raises:
        DatasetError: the folder or the classes file does not exist.
    """
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise DatasetError(f"LabelMe folder not found: {folder} (dataset '{name}').")
    if classes_file is not None:
        classes_file = os.path.abspath(classes_file)
        if not os.path.isfile(classes_file):
            raise DatasetError(f"Classes file not found: {classes_file} (dataset '{name}').")

    def load_raw() -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
        with without_cyclic_gc():
            records, thing_classes = load_labelme_records(folder, classes_file)
        return records, thing_classes, {}

    metadata: dict[str, Any] = {"dirname": folder}
    if classes_file is not None:
        metadata["classes_file"] = classes_file
    register_validated(name, load_raw, key=("labelme", folder, classes_file),
                       source=f"labelme: {folder}", metadata=metadata, data_format="labelme")
    return name


register_format(DatasetFormat(
    name="labelme",
    register=register_labelme_dataset,
    fields=(
        SpecField("folder", "DIR", required=True),
        SpecField("classes_file", "FILE", positional=False, key="classes"),
    ),
    example="shelf=labelme:shelf/annotations",
    description=(
        "LabelMe JSON, one file per image (rectangles; polygons as their bounding boxes), "
        "imagePath relative to the JSON"
    ),
    path_keys=("dirname", "classes_file"),
))
