"""YOLO txt labels (Ultralytics, Roboflow and LabelImg exports) as registered Detectron2 datasets.

Two ways to say where the data is:

* an Ultralytics ``data.yaml`` and a split name (``train``, ``val``, ``test``, ...), read
  as Ultralytics' ``check_det_dataset`` reads it: the dataset root is ``path`` (relative
  to the working directory, else to the YAML's folder; when it exists nowhere, the
  YAML's folder, as for Roboflow exports whose ``path`` names the download folder) or the
  YAML's folder; each split is a folder of images (searched recursively), a ``.txt``
  list of image paths (``./x`` is relative to the list's folder), or a list of those;
  a relative entry starting with ``../`` that does not exist is tried without it
  (Roboflow's ``train: ../train/images``). ``names`` is a list or an ``{id: name}``
  mapping (ids 0..K-1); ``nc`` alone gives ``class_0`` ... The file is read with safe
  YAML and its ``download`` entry is never run.
* a folder of images and a class-names file (one name a line; LabelImg's
  ``classes.txt``, looked for beside the labels and the images when not given).

Labels follow Ultralytics' rule: the image path's last ``/images/`` becomes ``/labels/``
and the extension ``.txt`` (so ``images/train/a.jpg`` -> ``labels/train/a.txt``, and a
label beside its image where there is no ``images`` folder). An image without a label
file is an image without objects. A row is ``class cx cy w h``, normalised by the image
width and height; a row with more columns is a segmentation polygon ``class x1 y1 x2 y2
...`` and its bounding box is used (with a note). Malformed rows -- wrong column counts,
non-numbers, coordinates outside [0, 1] (beyond Ultralytics' 1 % tolerance) and class
ids outside the classes -- are reported together, by file and line.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from detectron2.structures import BoxMode

from retinanet_ext.data.catalog import register_validated
from retinanet_ext.data.formats import DatasetFormat, SpecField, register_format
from retinanet_ext.data.validation import SOURCE_KEY, DatasetError, read_image_header

logger = logging.getLogger("retinanet_ext.data")

IMAGE_SUFFIXES = frozenset({"bmp", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp"})
"""Ultralytics' image suffixes that PIL reads (its list also has dng, heic, pfm)."""
SPLIT_KEYS = ("train", "val", "test", "minival")
_NOT_SPLITS = frozenset({"path", "names", "nc", "download", "roboflow", "channels", "yaml_file"})
_COORDINATE_TOLERANCE = 0.01  # Ultralytics accepts [-0.01, 1.01]; validation clips the rest
_MAX_PROBLEMS_SHOWN = 20
_CLASSES_FILE_NAMES = ("classes.txt",)


def label_path(image_path: str) -> str:
    """The label file of an image by Ultralytics' rule (see the module docstring)."""
    images_part, labels_part = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    head, found, tail = image_path.rpartition(images_part)
    path = head + labels_part + tail if found else image_path
    return os.path.splitext(path)[0] + ".txt"


# --- data.yaml --------------------------------------------------------------------------


def read_data_yaml(yaml_file: str) -> dict[str, Any]:
    """Read a ``data.yaml`` with safe YAML; :class:`DatasetError` naming it if unusable."""
    import yaml

    try:
        with open(yaml_file, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError as error:
        raise DatasetError(f"YOLO data file not found: {yaml_file}.") from error
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as error:
        raise DatasetError(f"{yaml_file}: not valid safe YAML: {error}") from error
    if not isinstance(data, dict):
        raise DatasetError(
            f"{yaml_file}: expected a mapping with 'train', 'val' and 'names' (an Ultralytics "
            f"data.yaml), found {type(data).__name__}."
        )
    if "val" not in data and "validation" in data:
        data["val"] = data.pop("validation")  # as Ultralytics does
    return data


def _describe(value: Any) -> str:
    """A short description of a YAML value (never its full repr: aliases can nest it
    exponentially deep)."""
    if isinstance(value, str | int | float | bool) or value is None:
        return repr(value)[:80]
    return f"a {type(value).__name__} of {len(value)} entries" if isinstance(
        value, list | dict) else f"a {type(value).__name__}"


def class_names_from_yaml(data: dict[str, Any], yaml_file: str) -> list[str]:
    """``names`` (a list, or ``{id: name}`` with ids 0..K-1) or ``nc`` of a data.yaml."""
    names, count = data.get("names"), data.get("nc")
    if names is None:
        if isinstance(count, int) and not isinstance(count, bool) and count > 0:
            return [f"class_{i}" for i in range(count)]
        raise DatasetError(f"{yaml_file}: expected 'names' (a list of class names) or 'nc'.")
    values = names.values() if isinstance(names, dict) else names if isinstance(names, list) else []
    if not all(isinstance(v, str | int | float) for v in values):
        raise DatasetError(f"{yaml_file}: every class name in 'names' must be a plain string.")
    if isinstance(names, dict):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError) as error:
            raise DatasetError(
                f"{yaml_file}: 'names' maps class ids to names; found a key that is not an "
                f"integer: {sorted(map(str, names))[:5]}."
            ) from error
        if sorted(by_id) != list(range(len(by_id))):
            raise DatasetError(
                f"{yaml_file}: 'names' must give ids 0..{len(by_id) - 1}, found "
                f"{sorted(by_id)[:10]}."
            )
        names = [by_id[i] for i in range(len(by_id))]
    elif isinstance(names, list) and names:
        names = [str(n) for n in names]
    else:
        raise DatasetError(
            f"{yaml_file}: 'names' must be a non-empty list or an {{id: name}} mapping, found "
            f"{_describe(names)}."
        )
    if count is not None and count != len(names):
        raise DatasetError(f"{yaml_file}: 'nc' is {_describe(count)} but 'names' has {len(names)} "
                           "entries.")
    if len(set(names)) != len(names):
        raise DatasetError(f"{yaml_file}: 'names' repeats a class name: {names}.")
    return names


def _dataset_root(data: dict[str, Any], yaml_file: str) -> str:
    yaml_dir = os.path.dirname(os.path.abspath(yaml_file))
    given = data.get("path")
    if given in (None, ""):
        return yaml_dir
    if not isinstance(given, str):
        raise DatasetError(f"{yaml_file}: 'path' must be a folder, found {_describe(given)}.")
    if os.path.isabs(given):
        return given
    for candidate in (os.path.abspath(given), os.path.join(yaml_dir, given)):
        if os.path.isdir(candidate):
            return os.path.normpath(candidate)
    logger.info("%s: 'path: %s' exists neither in the working directory nor beside the file; "
                "using the file's folder %s.", yaml_file, given, yaml_dir)
    return yaml_dir


def available_splits(data: dict[str, Any]) -> list[str]:
    """The split names of a data.yaml: its non-empty string or list entries."""
    return [k for k, v in data.items()
            if k not in _NOT_SPLITS and isinstance(v, str | list) and v]


def split_sources(data: dict[str, Any], yaml_file: str, split: str) -> list[str]:
    """The folders and list files of ``split``, resolved as Ultralytics resolves them.

    Raises:
        DatasetError: the file has no such split, or one of its entries does not exist.
    """
    entry = data.get(split) if split not in _NOT_SPLITS else None
    if not isinstance(entry, str | list) or not entry:
        raise DatasetError(
            f"{yaml_file} has no split '{split}'; its splits: {available_splits(data) or 'none'}."
        )
    root = _dataset_root(data, yaml_file)
    entries = [entry] if isinstance(entry, str) else entry
    if not all(isinstance(value, str) for value in entries):
        raise DatasetError(f"{yaml_file}: split '{split}' must be a path or a list of paths, "
                           f"found {_describe(entry)}.")
    sources = []
    for value in entries:
        source = os.path.normpath(os.path.join(root, value))
        if not os.path.exists(source) and isinstance(entry, str) and value.startswith("../"):
            source = os.path.normpath(os.path.join(root, value[3:]))
        if not os.path.exists(source):
            raise DatasetError(
                f"{yaml_file}: split '{split}' entry {value!r} not found: looked for {source} "
                f"(dataset root {root}; the file's 'download' entry is never run)."
            )
        sources.append(source)
    return sources


# --- images and labels ------------------------------------------------------------------


def _is_image(path: str) -> bool:
    return path.rsplit(".", 1)[-1].lower() in IMAGE_SUFFIXES and "." in os.path.basename(path)


def _images_in_list(list_file: str) -> list[str]:
    parent = os.path.dirname(list_file)
    try:
        with open(list_file, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as error:
        raise DatasetError(f"{list_file}: not a UTF-8 list of image paths ({error}).") from error
    paths = []
    for line in lines:
        if line.startswith("./"):
            paths.append(os.path.join(parent, line[2:]))
        elif os.path.isabs(line) or os.path.exists(line):
            paths.append(os.path.abspath(line))
        else:
            paths.append(os.path.join(parent, line))
    return paths


def list_images(sources: Sequence[str]) -> list[str]:
    """Image files of folders (recursive) and ``.txt`` lists, sorted, as Ultralytics lists them."""
    found: list[str] = []
    for source in sources:
        if os.path.isdir(source):
            for folder, _, files in os.walk(source):
                found += [os.path.join(folder, name) for name in files]
        elif os.path.isfile(source):
            found += _images_in_list(source)
        else:
            raise DatasetError(f"YOLO image source not found: {source}.")
    return sorted(os.path.normpath(path) for path in found if _is_image(path))


@dataclass
class LabelRow:
    """One object of a label file: class id and normalised XYXY box."""

    class_id: int
    box: tuple[float, float, float, float]
    line: int
    polygon: bool


def _parse_row(fields: list[str], num_classes: int) -> tuple[LabelRow | None, str | None]:
    """(row, None) or (None, what is wrong); ``line`` is filled in by the caller."""
    count = len(fields)
    polygon = count >= 7 and (count - 1) % 2 == 0
    if count != 5 and not polygon:
        return None, (f"expected 5 columns 'class cx cy w h' (or a polygon 'class x1 y1 x2 y2 "
                      f"x3 y3 ...'), found {count}")
    try:
        values = [float(v) for v in fields]
    except ValueError:
        return None, f"expected numbers, found {' '.join(fields)!r:.80}"
    if not all(math.isfinite(v) for v in values):
        return None, f"non-finite value in {' '.join(fields)!r:.80}"
    class_value, coordinates = values[0], values[1:]
    if not class_value.is_integer() or not 0 <= class_value < num_classes:
        return None, (f"class id {fields[0]} is not one of the dataset's {num_classes} classes "
                      f"(0..{num_classes - 1})")
    low, high = -_COORDINATE_TOLERANCE, 1 + _COORDINATE_TOLERANCE
    outside = [v for v in coordinates if not low <= v <= high]
    if outside:
        return None, (f"coordinate {outside[0]:g} is outside [0, 1]; YOLO labels are normalised by "
                      "the image width and height")
    if polygon:
        xs, ys = coordinates[0::2], coordinates[1::2]
        box = (min(xs), min(ys), max(xs), max(ys))
    else:
        cx, cy, w, h = coordinates
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    return LabelRow(int(class_value), box, 0, polygon), None


def read_label_file(path: str, num_classes: int) -> tuple[list[LabelRow], list[str]]:
    """Rows of a label file and its problems (``"file:line: what"``); no file: no rows."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return [], []
    except (UnicodeDecodeError, OSError) as error:
        return [], [f"{path}: not a readable UTF-8 text file ({error})"]
    rows, problems = [], []
    for number, text in enumerate(lines, start=1):
        fields = text.split()
        if not fields:
            continue
        row, problem = _parse_row(fields, num_classes)
        if problem is not None:
            problems.append(f"{path}:{number}: {problem}")
        else:
            row.line = number
            rows.append(row)
    return rows, problems


def _record(index: int, image: str, num_classes: int) -> tuple[dict[str, Any], list[str], int]:
    """(record, problems, polygon rows) of one image."""
    label = label_path(image)
    rows, problems = read_label_file(label, num_classes)
    record: dict[str, Any] = {"file_name": image, "image_id": index, "annotations": [],
                              SOURCE_KEY: label if os.path.isfile(label) else image}
    if rows:
        header = read_image_header(image, referenced_by=label)
        record["width"], record["height"] = header.width, header.height
        scale = (header.width, header.height, header.width, header.height)
        for row in rows:
            record["annotations"].append({
                "bbox": [v * s for v, s in zip(row.box, scale, strict=True)],
                "bbox_mode": BoxMode.XYXY_ABS, "category_id": row.class_id, "iscrowd": 0,
                SOURCE_KEY: f"line {row.line}" + (" (polygon)" if row.polygon else ""),
            })
    return record, problems, sum(row.polygon for row in rows)


def load_yolo_records(
    images: Sequence[str], class_names: Sequence[str], source: str
) -> list[dict[str, Any]]:
    """Read the label files of ``images`` into unvalidated Detectron2 dataset dicts.

    Raises:
        DatasetError: any row is malformed; the message lists them by file and line.
    """
    records, problems, polygons = [], [], 0
    for index, image in enumerate(images):
        record, image_problems, image_polygons = _record(index, image, len(class_names))
        records.append(record)
        problems += image_problems
        polygons += image_polygons
    if problems:
        shown = "\n  ".join(problems[:_MAX_PROBLEMS_SHOWN])
        more = len(problems) - _MAX_PROBLEMS_SHOWN
        raise DatasetError(
            f"YOLO labels of {source}: {len(problems)} malformed rows:\n  {shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    missing = [r["file_name"] for r in records if r[SOURCE_KEY] == r["file_name"]]
    if missing:
        logger.warning(
            "%s: %d of %d images have no label file (e.g. %s); they are used as images without "
            "objects.", source, len(missing), len(records), label_path(missing[0]))
    if polygons:
        logger.warning("%s: note: %d label rows are segmentation polygons; their bounding boxes "
                       "are used.", source, polygons)
    return records


# --- class names without a data.yaml ----------------------------------------------------


def read_class_names(path: str) -> list[str]:
    """Class names from a file: one name a line (LabelImg's ``classes.txt``), or a YAML
    file with ``names`` (a data.yaml)."""
    if path.endswith((".yaml", ".yml")):
        return class_names_from_yaml(read_data_yaml(path), path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            names = [line.strip() for line in f if line.strip()]
    except FileNotFoundError as error:
        raise DatasetError(f"Class-names file not found: {path}.") from error
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not a UTF-8 text file ({error}).") from error
    if not names:
        raise DatasetError(f"{path}: expected one class name a line, found none.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DatasetError(f"{path}: class names listed twice: {repeated}.")
    return names


def _find_classes_file(images_dir: str) -> str:
    images = list_images([images_dir])
    folders = [os.path.dirname(label_path(images[0]))] if images else []
    folders += [images_dir, os.path.dirname(images_dir)]
    for folder in dict.fromkeys(folders):
        for name in _CLASSES_FILE_NAMES:
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    raise DatasetError(
        f"No class names for the YOLO images in {images_dir}: give a class-names file "
        f"(NAME=yolo:{images_dir}:CLASSES_FILE, one name a line) or a data.yaml "
        f"(NAME=yolo:DATA_YAML:SPLIT); looked for {', '.join(_CLASSES_FILE_NAMES)} in "
        f"{', '.join(dict.fromkeys(folders))}."
    )


# --- registration -----------------------------------------------------------------------


def _from_data_yaml(
    name: str, path: str, split: str | None, classes_file: str | None
) -> tuple[list[str], list[str], dict[str, Any], str]:
    """(class names, image sources, metadata, description) of a data.yaml's split."""
    data = read_data_yaml(path)
    if split is None:
        raise DatasetError(
            f"Dataset '{name}': name the split of {path} to use, e.g. "
            f"'{name}=yolo:{path}:train'; its splits: {available_splits(data) or 'none'}."
        )
    if classes_file is not None:
        raise DatasetError(f"Dataset '{name}': the class names come from {path}; "
                           "a classes file is only for a folder of images.")
    sources = split_sources(data, path, split)
    metadata = {"yaml_file": path, "image_root": sources[0], "split": split}
    return class_names_from_yaml(data, path), sources, metadata, f"yolo: {path} ({split})"


def register_yolo_dataset(
    name: str,
    path: str,
    split: str | None = None,
    classes_file: str | None = None,
) -> str:
    """Register YOLO-labelled images (see the module docstring) as dataset ``name``.

    Args:
        name: the dataset name for ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        path: an Ultralytics ``data.yaml``, or a folder of images.
        split: with a data.yaml, the split to use (``train``, ``val``, ``test``, ...).
            With a folder, a class-names file may be given here (the spec
            ``NAME=yolo:IMAGES_DIR:CLASSES_FILE``) instead of ``classes_file``.
        classes_file: with a folder, the class names, one a line; default: a
            ``classes.txt`` beside the labels, in the folder, or in its parent.

    Returns:
        ``name``.

    Raises:
        DatasetError: a file or folder does not exist, the data.yaml is malformed or has
            no such split, or no class names are found.
    """
    path = os.path.abspath(path)
    if os.path.isfile(path):
        class_names, sources, metadata, source = _from_data_yaml(name, path, split, classes_file)
    elif os.path.isdir(path):
        if split is not None and classes_file is not None:
            raise DatasetError(f"Dataset '{name}': give the class-names file once.")
        classes_file = os.path.abspath(classes_file or split or _find_classes_file(path))
        class_names = read_class_names(classes_file)
        sources = [path]
        metadata = {"image_root": path, "classes_file": classes_file}
        source = f"yolo: {path}"
    else:
        raise DatasetError(
            f"YOLO dataset not found: {path} (dataset '{name}'); expected a data.yaml or a "
            "folder of images."
        )

    def load_raw() -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
        images = list_images(sources)
        if not images:
            raise DatasetError(
                f"{source}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in "
                f"{', '.join(sources)}."
            )
        return load_yolo_records(images, class_names, source), list(class_names), {}

    register_validated(
        name, load_raw,
        key=("yolo", path, split, classes_file, tuple(sources)),
        source=source,
        metadata={**metadata, "thing_classes": list(class_names)},
        data_format="yolo",
    )
    return name


register_format(DatasetFormat(
    name="yolo",
    register=register_yolo_dataset,
    fields=(
        SpecField("path", "DATA_YAML|IMAGES_DIR", required=True),
        SpecField("split", "SPLIT|CLASSES_FILE"),
        SpecField("classes_file", "FILE", positional=False, key="classes"),
    ),
    example="parts_train=yolo:parts/data.yaml:train",
    description=(
        "YOLO txt labels: an Ultralytics/Roboflow data.yaml and a split, or an images "
        "folder and a class-names file"
    ),
    path_keys=("yaml_file", "image_root", "classes_file"),
))
