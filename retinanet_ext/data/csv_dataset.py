"""CSV box lists (``path,x1,y1,x2,y2,class`` a row) as registered Detectron2 datasets.

The format keras-retinanet made common:

* one row a box: ``path,x1,y1,x2,y2,class`` with absolute XYXY pixel coordinates;
* an image with no objects: one row with the five other fields empty, ``path,,,,,``;
* an image with several boxes: several rows (images keep the order of first appearance);
* ``path`` is relative to the CSV file's folder unless ``image_root`` is given
  (absolute paths are used as they are);
* an optional header row ``path,x1,y1,x2,y2,class`` (names matched case-insensitively)
  is skipped.

The optional classes file has one class a line, either ``name`` (the line order gives
the contiguous ids) or ``name,id`` (ids order the classes). Without it the classes are
the sorted names found in the CSV.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from retinanet_ext.data.catalog import register_validated
from retinanet_ext.data.validation import SOURCE_KEY, DatasetError

from detectron2.structures import BoxMode

_HEADER = ["path", "x1", "y1", "x2", "y2", "class"]


def read_classes_file(classes_file: str) -> list[str]:
    """Read class names from ``name`` or ``name,id`` lines, in contiguous-id order.

    Raises:
        DatasetError: the file is missing or empty, mixes the two forms, repeats a name
            or an id, or has a non-integer id; the message names the file and line.
    """
    try:
        with open(classes_file, encoding="utf-8-sig", newline="") as f:
            rows = [(n, row) for n, row in enumerate(csv.reader(f), start=1) if any(row)]
    except FileNotFoundError as error:
        raise DatasetError(f"Classes file not found: {classes_file}.") from error
    if not rows:
        raise DatasetError(f"{classes_file}: expected one class name a line, found no lines.")
    widths = {len(row) for _, row in rows}
    if not (widths == {1} or widths == {2}):
        raise DatasetError(
            f"{classes_file}: expected every line to be 'name' or every line to be "
            f"'name,id', found lines with {sorted(widths)} fields."
        )
    names: dict[str, int] = {}
    ids: dict[int, str] = {}
    for line, row in rows:
        name = row[0].strip()
        if not name:
            raise DatasetError(f"{classes_file}:{line}: empty class name.")
        if len(row) == 2:
            try:
                class_id = int(row[1])
            except ValueError as error:
                raise DatasetError(
                    f"{classes_file}:{line}: expected an integer id after the name, "
                    f"found {row[1]!r}."
                ) from error
        else:
            class_id = len(names)
        if name in names:
            raise DatasetError(f"{classes_file}:{line}: class '{name}' is listed twice.")
        if class_id in ids:
            raise DatasetError(
                f"{classes_file}:{line}: id {class_id} is given to both '{ids[class_id]}' "
                f"and '{name}'."
            )
        names[name], ids[class_id] = class_id, name
    return [ids[i] for i in sorted(ids)]


def load_csv_records(
    csv_file: str, image_root: str | None = None, class_names: list[str] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read a box CSV (see the module docstring) into unvalidated dataset dicts.

    Returns:
        (records, thing_classes); ``image_id`` is the image's position.

    Raises:
        DatasetError: a row is malformed or names a class not in ``class_names``; the
            message names the file and line.
    """
    base = image_root if image_root is not None else os.path.dirname(csv_file)
    records: dict[str, dict[str, Any]] = {}
    boxes: list[tuple[str, list[float], str, int]] = []  # (path, box, class, line)
    try:
        with open(csv_file, encoding="utf-8-sig", newline="") as f:
            rows = list(enumerate(csv.reader(f), start=1))
    except FileNotFoundError as error:
        raise DatasetError(f"CSV annotation file not found: {csv_file}.") from error
    except UnicodeDecodeError as error:
        raise DatasetError(f"{csv_file}: not a UTF-8 text file ({error}).") from error
    first_row = True
    for line, row in rows:
        if not any(field.strip() for field in row):
            continue
        is_first, first_row = first_row, False
        if len(row) != 6:
            raise DatasetError(
                f"{csv_file}:{line}: expected 6 fields 'path,x1,y1,x2,y2,class', found "
                f"{len(row)}: {','.join(row)!r}."
            )
        row = [field.strip() for field in row]
        if is_first and [field.lower() for field in row] == _HEADER:
            continue
        path, coordinates, class_name = row[0], row[1:5], row[5]
        if not path:
            raise DatasetError(f"{csv_file}:{line}: the image path is empty.")
        file_name = os.path.normpath(os.path.join(base, path))
        if file_name not in records:
            records[file_name] = {
                "file_name": file_name,
                "image_id": len(records),
                "annotations": [],
                SOURCE_KEY: csv_file,
            }
        if not any(coordinates):
            continue  # "path,,,,," : an image without objects
        if not all(coordinates):
            raise DatasetError(
                f"{csv_file}:{line}: expected all four of x1,y1,x2,y2 (a box) or none (an "
                f"image without objects), found {coordinates}."
            )
        try:
            box = [float(v) for v in coordinates]
        except ValueError as error:
            raise DatasetError(
                f"{csv_file}:{line}: expected numeric x1,y1,x2,y2, found {coordinates}."
            ) from error
        if not class_name:
            raise DatasetError(f"{csv_file}:{line}: a box without a class name.")
        boxes.append((file_name, box, class_name, line))

    if class_names is None:
        class_names = sorted({class_name for _, _, class_name, _ in boxes})
    class_ids = {name: index for index, name in enumerate(class_names)}
    for file_name, box, class_name, line in boxes:
        if class_name not in class_ids:
            raise DatasetError(
                f"{csv_file}:{line}: class '{class_name}' is not one of the dataset's "
                f"classes {class_names}."
            )
        records[file_name]["annotations"].append(
            {
                "bbox": box,
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": class_ids[class_name],
                "iscrowd": 0,
                SOURCE_KEY: f"line {line}",
            }
        )
    if not records:
        raise DatasetError(f"{csv_file}: expected rows 'path,x1,y1,x2,y2,class', found none.")
    return list(records.values()), list(class_names)


def register_csv_dataset(
    name: str,
    csv_file: str,
    image_root: str | None = None,
    classes_file: str | None = None,
) -> str:
    """Register a box CSV (see the module docstring) as dataset ``name``.

    Args:
        name: the dataset name for ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        csv_file: the annotation CSV.
        image_root: folder the image paths are relative to; default the CSV's folder.
        classes_file: class list (``name`` or ``name,id`` lines); a box of another class
            is an error. Default: the sorted class names found in the CSV.

    Returns:
        ``name``.

    Raises:
        DatasetError: a file or folder does not exist, the classes file is malformed, or
            ``name`` is taken.
    """
    csv_file = os.path.abspath(csv_file)
    if not os.path.isfile(csv_file):
        raise DatasetError(f"CSV annotation file not found: {csv_file} (dataset '{name}').")
    if image_root is not None:
        image_root = os.path.abspath(image_root)
        if not os.path.isdir(image_root):
            raise DatasetError(f"Image folder not found: {image_root} (dataset '{name}').")
    class_names = None
    if classes_file is not None:
        classes_file = os.path.abspath(classes_file)
        class_names = read_classes_file(classes_file)

    def load_raw() -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
        records, thing_classes = load_csv_records(csv_file, image_root, class_names)
        return records, thing_classes, {}

    metadata: dict[str, Any] = {
        "csv_file": csv_file, "image_root": image_root or os.path.dirname(csv_file)
    }
    if class_names is not None:
        metadata["thing_classes"] = class_names
    register_validated(
        name,
        load_raw,
        key=("csv", csv_file, image_root, classes_file),
        source=f"csv: {csv_file}",
        metadata=metadata,
    )
    return name
