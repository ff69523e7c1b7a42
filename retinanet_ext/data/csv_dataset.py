"""CSV box lists as registered Detectron2 datasets: keras-retinanet's rows, or any CSV whose
header names its columns (the TensorFlow Object Detection API's layout among them).

Without a header, the rows are keras-retinanet's:

* one row a box: ``path,x1,y1,x2,y2,class`` with absolute XYXY pixel coordinates;
* an image with no objects: one row with the five other fields empty, ``path,,,,,``;
* an image with several boxes: several rows (images keep the order of first appearance).

With a header row, its names say which column is which (case-insensitive; other
columns are ignored), e.g. the TF Object Detection API's
``filename,width,height,class,xmin,ymin,xmax,ymax``:

* image: ``filename``, ``file_name``, ``path``, ``image``, ``image_path``, ``img``;
* box: ``xmin``/``x1``/``x_min``/``left``, ``ymin``/``y1``/``y_min``/``top``,
  ``xmax``/``x2``/``x_max``/``right``, ``ymax``/``y2``/``y_max``/``bottom``;
* class: ``class``, ``label``, ``class_name``, ``category``, ``name``;
* optional ``width``, ``height``: the image size the boxes refer to (checked against the
  image, which wins, with a warning).

Image paths are relative to ``image_root`` when given (``images=DIR`` in a spec), else
to the CSV file's folder; absolute paths are used as they are.

The optional classes file has one class a line, either ``name`` (the line order gives
the contiguous ids) or ``name,id`` (ids order the classes). Without it the classes are
the sorted names found in the CSV.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from detectron2.structures import BoxMode

from retinanet_ext.data.catalog import register_validated
from retinanet_ext.data.formats import DatasetFormat, SpecField, register_format
from retinanet_ext.data.validation import SOURCE_KEY, DatasetError

_COLUMN_NAMES = {
    "file": ("filename", "file_name", "path", "image", "image_path", "img"),
    "x1": ("xmin", "x1", "x_min", "left"),
    "y1": ("ymin", "y1", "y_min", "top"),
    "x2": ("xmax", "x2", "x_max", "right"),
    "y2": ("ymax", "y2", "y_max", "bottom"),
    "class": ("class", "label", "class_name", "category", "name"),
    "width": ("width",),
    "height": ("height",),
}
_REQUIRED_COLUMNS = ("file", "x1", "y1", "x2", "y2", "class")
_KERAS_COLUMNS = {name: index for index, name in enumerate(_REQUIRED_COLUMNS)}
_KERAS_LAYOUT = "'path,x1,y1,x2,y2,class'"


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


def _header_columns(row: list[str]) -> dict[str, int] | None:
    """Column name -> index if ``row`` is a header naming the columns, else ``None``."""
    lowered = [field.strip().lower() for field in row]
    columns = {}
    for column, names in _COLUMN_NAMES.items():
        index = next((i for i, field in enumerate(lowered) if field in names), None)
        if index is not None:
            columns[column] = index
    if sum(column in columns for column in _REQUIRED_COLUMNS) < 3:
        return None  # a data row has numbers (or nothing) in four of its six fields
    coordinates = [row[i] for c, i in columns.items() if c in ("x1", "y1", "x2", "y2")]
    if any(_is_number(value) for value in coordinates):
        return None  # a data row whose class happens to be called e.g. "label"
    return columns


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_rows(csv_file: str) -> list[tuple[int, list[str]]]:
    try:
        with open(csv_file, encoding="utf-8-sig", newline="") as f:
            return [(n, row) for n, row in enumerate(csv.reader(f), start=1)
                    if any(field.strip() for field in row)]
    except FileNotFoundError as error:
        raise DatasetError(f"CSV annotation file not found: {csv_file}.") from error
    except UnicodeDecodeError as error:
        raise DatasetError(f"{csv_file}: not a UTF-8 text file ({error}).") from error
    except csv.Error as error:
        raise DatasetError(f"{csv_file}: not a readable CSV file ({error}).") from error


def _columns_of(csv_file: str, rows: list[tuple[int, list[str]]]) -> tuple[dict[str, int], int]:
    """(column -> index, number of header rows to skip)."""
    if not rows:
        return _KERAS_COLUMNS, 0
    line, first = rows[0]
    columns = _header_columns(first)
    if columns is None:
        return _KERAS_COLUMNS, 0
    missing = [c for c in _REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(
            f"{csv_file}:{line}: the header {first} names no column for "
            f"{', '.join(missing)}; expected one of "
            + "; ".join(f"{c}: {'/'.join(_COLUMN_NAMES[c])}" for c in missing) + "."
        )
    return columns, 1


def _parse_row(
    csv_file: str, line: int, row: list[str], columns: dict[str, int], width: int
) -> tuple[str, list[float] | None, str, tuple[int, int] | None]:
    """(path, box or None for an image without objects, class name, (width, height) or None)."""
    where = f"{csv_file}:{line}"
    if len(row) != width:
        expected = (f"6 fields {_KERAS_LAYOUT}" if columns is _KERAS_COLUMNS
                    else f"{width} fields as in the header")
        raise DatasetError(f"{where}: expected {expected}, found {len(row)}: {','.join(row)!r}.")
    row = [field.strip() for field in row]
    path = row[columns["file"]]
    if not path:
        raise DatasetError(f"{where}: the image path is empty.")
    size = None
    if "width" in columns and "height" in columns:
        try:
            size = (int(float(row[columns["width"]])), int(float(row[columns["height"]])))
        except (ValueError, OverflowError) as error:  # OverflowError: "inf"
            raise DatasetError(f"{where}: expected a numeric width and height, found "
                               f"{row[columns['width']]!r}, {row[columns['height']]!r}.") from error
    coordinates = [row[columns[c]] for c in ("x1", "y1", "x2", "y2")]
    if not any(coordinates):
        return path, None, "", size  # "path,,,,," : an image without objects
    if not all(coordinates):
        raise DatasetError(
            f"{where}: expected all four of x1,y1,x2,y2 (a box) or none (an image without "
            f"objects), found {coordinates}."
        )
    try:
        box = [float(v) for v in coordinates]
    except ValueError as error:
        raise DatasetError(
            f"{where}: expected numeric x1,y1,x2,y2, found {coordinates}."
        ) from error
    class_name = row[columns["class"]]
    if not class_name:
        raise DatasetError(f"{where}: a box without a class name.")
    if not class_name.isprintable():
        raise DatasetError(f"{where}: the class name {class_name!r} holds control characters "
                           f"(a binary or damaged file?).")
    return path, box, class_name, size


def load_csv_records(
    csv_file: str, image_root: str | None = None, class_names: list[str] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read a box CSV (see the module docstring) into unvalidated dataset dicts.

    Returns:
        (records, thing_classes); ``image_id`` is the image's position.

    Raises:
        DatasetError: a row is malformed, a header lacks a needed column, or a row names a
            class not in ``class_names``; the message names the file and line.
    """
    base = image_root if image_root is not None else os.path.dirname(csv_file)
    rows = _read_rows(csv_file)
    columns, skip = _columns_of(csv_file, rows)
    width = len(rows[0][1]) if skip else len(_KERAS_COLUMNS)
    records: dict[str, dict[str, Any]] = {}
    boxes: list[tuple[str, list[float], str, int]] = []  # (path, box, class, line)
    for line, row in rows[skip:]:
        path, box, class_name, size = _parse_row(csv_file, line, row, columns, width)
        file_name = os.path.normpath(os.path.join(base, path))
        if file_name not in records:
            records[file_name] = {
                "file_name": file_name,
                "image_id": len(records),
                "annotations": [],
                SOURCE_KEY: csv_file,
            }
            if size is not None:
                records[file_name]["width"], records[file_name]["height"] = size
        if box is not None:
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
        raise DatasetError(
            f"{csv_file}: expected rows {_KERAS_LAYOUT} (or a header naming the columns), "
            "found none."
        )
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
        image_root: folder the image paths are relative to (``images=DIR`` in a spec);
            default the CSV's folder.
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
        data_format="csv",
    )
    return name


register_format(DatasetFormat(
    name="csv",
    register=register_csv_dataset,
    fields=(
        SpecField("csv_file", "CSV_FILE", required=True),
        SpecField("classes_file", "CLASSES_FILE"),
        SpecField("image_root", "DIR", positional=False, key="images"),
    ),
    example="raccoon=csv:data/train_labels.csv:images=images",
    description=(
        "CSV rows path,x1,y1,x2,y2,class, or a header naming the columns (TF Object "
        "Detection API); images relative to images=DIR or the CSV's folder"
    ),
    path_keys=("csv_file", "image_root"),
))
