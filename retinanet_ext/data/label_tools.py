"""What the readers of the label tools' formats share (:mod:`.labelme`, :mod:`.cvat`,
:mod:`.labelstudio`): problems gathered and reported together, boxes checked against the
image size the file states, shapes turned into boxes, class lists and image look-up.

A problem names its file and entry (``"a.json: shape 2 (label 'cat'): ..."``); a loader
collects them and raises one :class:`DatasetError` listing the first
:data:`MAX_PROBLEMS_SHOWN`, as the YOLO reader does for label rows.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from detectron2.structures import BoxMode

from retinanet_ext.data.csv_dataset import read_classes_file
from retinanet_ext.data.labeled_image import LabeledImage
from retinanet_ext.data.validation import SOURCE_KEY, DatasetError

logger = logging.getLogger("retinanet_ext.data")

MAX_PROBLEMS_SHOWN = 20
OUTSIDE_TOLERANCE = 0.01
"""A coordinate may pass the image edge by this share of the side (at least one pixel);
validation clips it. Farther out, the box is an error (YOLO's reader allows the same 1 %)."""
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
RESERVED_LABELS = ("__ignore__", "_background_")
"""LabelMe's reserved label names (the first lines of its ``labels.txt``): never classes."""

Box = tuple[float, float, float, float]


def read_json(path: str) -> Any:
    """A JSON file's content; UTF-8 with or without a BOM (``json.loads`` of the bytes,
    which also takes UTF-16 and UTF-32).

    Raises:
        OSError, ValueError (json.JSONDecodeError, UnicodeDecodeError), RecursionError.
    """
    # os.read, not open(): a LabelMe folder is a file per image, and open()'s buffered
    # reader costs twice the read itself for files of a few kilobytes.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        parts = [os.read(descriptor, os.fstat(descriptor).st_size + 1)]
        while parts[-1]:
            parts.append(os.read(descriptor, 1 << 20))
    finally:
        os.close(descriptor)
    return json.loads(b"".join(parts))


@contextlib.contextmanager
def without_cyclic_gc() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while a loader builds its trees and records.

    They hold no reference cycles, so its passes find nothing, yet each walks them (and, at
    times, every object torch and Detectron2 made). The previous state is restored.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Problems:
    """The problems of one dataset's files, raised together by :meth:`raise_if_any`."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.lines.append(f"{where}: {what}")

    def raise_if_any(self) -> None:
        if not self.lines:
            return
        shown = "\n  ".join(self.lines[:MAX_PROBLEMS_SHOWN])
        more = len(self.lines) - MAX_PROBLEMS_SHOWN
        raise DatasetError(
            f"{self.source}: {len(self.lines)} problem(s):\n  {shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )


def as_number(value: Any) -> float | None:
    """A finite float from a JSON/XML value (numbers and numeric strings), else ``None``."""
    kind = type(value)
    if kind is float:  # the common cases first: this runs for every coordinate
        return value if value - value == 0 else None  # inf - inf and nan - nan are nan
    if kind is int:
        return float(value) if -1e300 < value < 1e300 else None
    if kind is str:  # XML attributes
        try:
            number = float(value)
        except ValueError:
            return None
        return number if number - number == 0 else None
    if kind is bool or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def as_size(value: Any) -> int | None:
    """A positive integer image side (``640``, ``"640"``, ``640.0``), else ``None``."""
    if type(value) is int and 0 < value <= 2**31:
        return value
    number = as_number(value)
    if number is None or number <= 0 or not number.is_integer() or number > 2**31:
        return None
    return int(number)


def points_box(points: Any) -> Box | None:
    """The bounding box of ``[[x, y], ...]`` (two or more finite points), else ``None``."""
    if type(points) is not list or len(points) < 2:
        return None
    if len(points) == 2 and type(points[0]) is list and type(points[1]) is list and len(
            points[0]) == 2 and len(points[1]) == 2:  # a rectangle: the common case, quickly
        (x1, y1), (x2, y2) = points
        x1, y1, x2, y2 = as_number(x1), as_number(y1), as_number(x2), as_number(y2)
        if x1 is None or y1 is None or x2 is None or y2 is None:
            return None
        return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)
    try:
        xs, ys = zip(*points, strict=True)
    except (TypeError, ValueError):  # a point that is not a pair
        return None
    if any(type(p) not in (list, tuple) for p in points):
        return None
    xs, ys = [as_number(x) for x in xs], [as_number(y) for y in ys]
    if None in xs or None in ys:
        return None
    return min(xs), min(ys), max(xs), max(ys)


def rotated_box(x1: float, y1: float, x2: float, y2: float, degrees: float,
                center: tuple[float, float]) -> Box:
    """The bounding box of the XYXY box turned ``degrees`` clockwise (image axes, y down)
    about ``center``."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = center
    xs, ys = [], []
    for x, y in ((x1, y1), (x2, y1), (x2, y2), (x1, y2)):
        dx, dy = x - cx, y - cy
        xs.append(cx + dx * cos - dy * sin)
        ys.append(cy + dx * sin + dy * cos)
    return min(xs), min(ys), max(xs), max(ys)


def outside_image(box: Box, width: float | None, height: float | None,
                  what: str = "") -> str | None:
    """What is wrong with a box farther outside the stated image than the tolerance;
    ``None`` when it is usable (validation clips the rest, and drops empty and inverted
    boxes with a warning, as for every format)."""
    x1, y1, x2, y2 = box
    if (width is not None and height is not None and -1.0 <= x1 <= width + 1.0
            and -1.0 <= x2 <= width + 1.0 and -1.0 <= y1 <= height + 1.0
            and -1.0 <= y2 <= height + 1.0):  # inside the slack: the common case, quickly
        return None
    for low, high, side, axis in ((min(x1, x2), max(x1, x2), width, "x"),
                                  (min(y1, y2), max(y1, y2), height, "y")):
        if side is None:
            continue
        slack = max(1.0, OUTSIDE_TOLERANCE * side)
        if low < -slack or high > side + slack:
            return (f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] is outside "
                    f"{what or f'the {width}x{height} image'} (its {axis} range is [{low:g}, "
                    f"{high:g}], the image's [0, {side:g}])")
    return None


def box_annotation(box: Box, category_id: int, where: str) -> dict[str, Any]:
    """A Detectron2 annotation dict of an absolute XYXY box."""
    return {"bbox": list(box), "bbox_mode": BoxMode.XYXY_ABS, "category_id": category_id,
            "iscrowd": 0, SOURCE_KEY: where}


def read_class_list(classes_file: str) -> list[str]:
    """Class names of a file (one a line, or ``name,id`` lines; see
    :func:`.csv_dataset.read_classes_file`), without LabelMe's reserved ``__ignore__`` and
    ``_background_`` lines (its ``labels.txt`` starts with them)."""
    names = [n for n in read_classes_file(classes_file) if n not in RESERVED_LABELS]
    if not names:
        raise DatasetError(f"{classes_file}: no class names besides {list(RESERVED_LABELS)}.")
    return names


def class_ids(found: Iterable[str], classes_file: str | None) -> tuple[list[str], dict[str, int]]:
    """The class list, from ``classes_file`` or else the sorted labels ``found``, and the
    name -> contiguous id map."""
    names = read_class_list(classes_file) if classes_file else sorted(set(found))
    return names, {name: index for index, name in enumerate(names)}


def find_image(folders: Sequence[str], relative_paths: Sequence[str]) -> tuple[str | None,
                                                                               list[str]]:
    """The first existing ``folder/path`` (folders outer, paths inner), and those tried."""
    tried: list[str] = []
    for folder in dict.fromkeys(folders) if len(folders) > 1 else folders:
        for path in relative_paths:
            if not path:
                continue
            candidate = os.path.join(folder, path)
            if os.path.isfile(candidate):  # per image: the found one is normalised only
                return os.path.normpath(candidate), tried
            candidate = os.path.normpath(candidate)
            if candidate not in tried:
                tried.append(candidate)
    return None, tried


def describe_tried(tried: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(tried[:limit])
    return shown + (f" and {len(tried) - limit} more" if len(tried) > limit else "")


def note_counts(source: str, counts: dict[str, int], noun: str, consequence: str,
                example: str | None = None) -> None:
    """One warning, e.g. ``source: note: 3 polygon, 1 oriented_rectangle shapes (e.g. in
    a.json): their bounding boxes are used.``"""
    shown = ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()) if count)
    if shown:
        where = f" (e.g. in {example})" if example else ""
        logger.warning("%s: note: %s %s%s: %s.", source, shown, noun, where, consequence)


# --- writing ----------------------------------------------------------------------------


def image_names(file_names: Sequence[str]) -> list[str]:
    """Each path relative to the images' common folder (its base name when they share one):
    an image's name in a written label file."""
    paths = [os.path.abspath(f) for f in file_names]
    if not paths:
        return []
    folder = os.path.commonpath([os.path.dirname(p) for p in paths])
    return [os.path.relpath(p, folder).replace(os.sep, "/") for p in paths]


def check_class_ids(images: Sequence[LabeledImage], class_names: Sequence[str]) -> None:
    """ValueError naming the image if a class id is not an index into ``class_names``."""
    for image in images:
        bad = [int(i) for i in image.class_ids if not 0 <= i < len(class_names)]
        if bad:
            raise ValueError(f"{image.file_name}: class ids {bad[:5]} are not indices into the "
                             f"{len(class_names)} class names.")
