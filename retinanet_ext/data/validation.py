"""Checks every dataset goes through before training: images, sizes and boxes.

:func:`validate_records` takes Detectron2 standard dataset dicts (as the format loaders
in this package produce them) and returns them cleaned, with a :class:`DatasetSummary`:

* every image is opened (header only: ``PIL.Image.open`` is lazy, so no pixel is
  decoded); a missing image is a :class:`DatasetError` naming the file. The image's own
  size is the truth: a width/height in the annotation that disagrees with it is replaced,
  with a warning; one that is the size of the stored pixels before their EXIF rotation
  (boxes drawn on the raw pixels) says so. The format comes from the content, not the
  extension, as in Detectron2's ``read_image``; an extension that lies is a warning.
* each file's end is checked (JPEG: the end-of-image marker, PNG: the ``IEND`` chunk; other
  formats are decoded): a truncated file that still decodes is listed, in one warning,
  and read as far as it goes; a file that is no image or cannot be decoded is kept out of
  the records and listed in ``bad_images``, and the catalog (:mod:`.catalog`) stops the run
  on it unless it is told to drop it (``DATALOADER.SKIP_BAD_IMAGES``).
* boxes past the image edge are clipped to it and counted; zero-area, inverted,
  non-finite and fully-outside boxes are dropped with a warning naming the file.
* crowd boxes (``iscrowd=1``) are kept and counted: Detectron2's ``DatasetMapper``
  removes them before training, so they are never positives, and COCO evaluation
  treats them as ignore regions.

Warnings go to the ``retinanet_ext.data`` logger, one line per problem file (at most
:data:`MAX_WARNING_LINES` a dataset) and one summary line.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from detectron2.structures import BoxMode
from PIL import Image

from retinanet_ext.structures import (
    DEFAULT_MAX_IMAGE_PIXELS,
    PILLOW_READ_ERRORS,
    ImageReadError,
    ImageTooLargeError,
    open_image,
    read_image_file,
)

logger = logging.getLogger("retinanet_ext.data")

MAX_WARNING_LINES = 20
"""Per dataset, at most this many per-file warning lines are logged; the rest are counted."""

SOURCE_KEY = "_source"
"""Private key a loader may put in a record (the file it came from) or in an annotation
(where in that file, e.g. ``"line 12"``), used in messages. :func:`validate_records`
removes it."""

_EXIF_ORIENTATION_TAG = 274
# EXIF orientations 5-8 rotate by 90 degrees: Detectron2's read_image applies them, so the
# array it returns has width and height swapped relative to the stored pixels.
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)

_FORMATS_BY_EXTENSION = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".png": "PNG",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
}

DROP_REASONS = ("zero-area", "inverted", "non-finite", "outside image")
# PIL modes of more than 8 bits a channel: read scaled to 8-bit RGB (structures.to_rgb).
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# Where a format's complete file ends with a marker, it is looked for in this many last
# bytes (a JPEG may carry a trailer after its end-of-image marker).
_TAIL_BYTES = 4096
_END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND"}


class DatasetError(ValueError):
    """A dataset cannot be used as it is; the message names the file and the problem."""


class UnreadableImageError(DatasetError):
    """An image file exists but is no image Pillow can open, or cannot be decoded."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, as Detectron2's ``read_image`` will see it."""

    width: int
    height: int
    format: str | None
    mode: str | None = None  # PIL's mode, e.g. "RGB", "L", "I;16"
    orientation: int | None = None  # EXIF orientation, 1-8; None: no tag

    @property
    def stored_size(self) -> tuple[int, int]:
        """(width, height) of the pixels as stored, before the EXIF rotation."""
        if self.orientation in _TRANSPOSING_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height


def read_image_header(path: str, *, referenced_by: str | None = None) -> ImageHeader:
    """Read an image's size and format from its header, without decoding the pixels.

    The size is the one Detectron2's ``read_image`` returns: EXIF orientations that
    rotate by 90 degrees swap width and height.

    Args:
        path: the image file.
        referenced_by: the annotation file that names the image, for error messages.

    Raises:
        DatasetError: the file is missing.
        UnreadableImageError: the file is not an image PIL can read.
    """
    where = f" (referenced by {referenced_by})" if referenced_by else ""
    if not os.path.isfile(path):
        raise DatasetError(f"Image file not found: {path}{where}.")
    try:
        with open_image(path) as image:
            width, height = image.size
            image_format, image_mode = image.format, image.mode
            # info["exif"] is read with the header for JPEG/WebP; Image.getexif() would
            # decode the whole file for PNG, which this check must not do.
            raw_exif = image.info.get("exif")
            orientation = None
            if raw_exif:
                exif = Image.Exif()
                exif.load(raw_exif)
                orientation = exif.get(_EXIF_ORIENTATION_TAG)
    except (ImageReadError, *PILLOW_READ_ERRORS) as error:
        got = error.__cause__ if isinstance(error, ImageReadError) and error.__cause__ else error
        raise UnreadableImageError(
            f"Cannot read image {path}{where}: expected an image file PIL can open, "
            f"got: {got}"
        ) from error
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        orientation = None
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return ImageHeader(width=width, height=height, format=image_format, mode=image_mode,
                       orientation=orientation)


def decode_image(path: str, *, referenced_by: str | None = None) -> bool:
    """Decode every pixel of ``path``; returns whether the file is truncated (it decodes
    only as far as it goes, the rest left blank).

    A header check does not notice a truncated or corrupt image body; this does. An image
    over :data:`~retinanet_ext.structures.DEFAULT_MAX_IMAGE_PIXELS` is not decoded here (the
    pixel limit of a config decides on it), and counts as whole.

    Raises:
        UnreadableImageError: the file cannot be decoded at all.
    """
    try:
        return read_image_file(path, max_pixels=DEFAULT_MAX_IMAGE_PIXELS).truncated
    except ImageTooLargeError:
        return False
    except ImageReadError as error:
        where = f" (referenced by {referenced_by})" if referenced_by else ""
        reason = str(error).removeprefix(f"{path}: ")
        raise UnreadableImageError(f"Cannot decode image {path}{where}: {reason}") from error


def ends_complete(path: str, image_format: str | None) -> bool | None:
    """Whether the file ends as its format says a whole file does (JPEG: an end-of-image
    marker, PNG: an ``IEND`` chunk, in its last bytes); None for formats without such a
    cheap check. Reads only the file's tail."""
    marker = _END_MARKERS.get(image_format or "")
    if marker is None:
        return None
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - _TAIL_BYTES))
        return marker in f.read()


def check_decodes(path: str, header: ImageHeader, *, referenced_by: str | None = None) -> bool:
    """Whether the image is truncated, found fast: a JPEG or PNG whose end is in place is
    taken as whole without decoding; any other file is decoded (:func:`decode_image`).

    Raises:
        UnreadableImageError: the file cannot be decoded at all.
    """
    if ends_complete(path, header.format):
        return False
    return decode_image(path, referenced_by=referenced_by)


@dataclass
class DatasetSummary:
    """What a dataset holds after validation, and what validation had to change.

    Box counts are of the boxes kept (after clipping and dropping). ``boxes_per_class``
    counts ordinary boxes, ``crowd_per_class`` crowd regions; both are keyed by class
    name, in ``thing_classes`` order.
    """

    name: str
    source: str
    thing_classes: list[str]
    num_images: int = 0
    boxes_per_class: dict[str, int] = field(default_factory=dict)
    crowd_per_class: dict[str, int] = field(default_factory=dict)
    images_without_boxes: int = 0
    clipped_boxes: int = 0
    dropped_by_reason: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(DROP_REASONS, 0)
    )
    size_mismatches: int = 0
    exif_size_mismatches: int = 0
    """Annotations whose width/height is the image's stored size before its EXIF rotation."""
    format_mismatches: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)
    """Problem file (or ``file:line``) -> what was wrong there and what was done."""
    truncated_images: list[str] = field(default_factory=list)
    """Image files that end early: read as far as they go, the rest left blank."""
    bad_images: dict[str, str] = field(default_factory=dict)
    """Image file -> why it cannot be used (no image, undecodable); not in the records nor
    in the counts above. The catalog stops the run on them unless it drops them."""
    dropped_images: dict[str, str] = field(default_factory=dict)
    """Image file -> why it was dropped with its annotations (``DATALOADER.SKIP_BAD_IMAGES``)."""

    def forget(self, record: dict[str, Any]) -> None:
        """Take a validated record out of the counts (its image is dropped)."""
        self.num_images -= 1
        annotations = record.get("annotations", [])
        if not annotations:
            self.images_without_boxes -= 1
        for annotation in annotations:
            counts = self.crowd_per_class if annotation.get("iscrowd") else self.boxes_per_class
            counts[self.thing_classes[annotation["category_id"]]] -= 1

    @property
    def num_boxes(self) -> int:
        """Boxes kept, crowd regions included."""
        return sum(self.boxes_per_class.values()) + self.crowd_boxes

    @property
    def crowd_boxes(self) -> int:
        return sum(self.crowd_per_class.values())

    @property
    def dropped_boxes(self) -> int:
        return sum(self.dropped_by_reason.values())

    @property
    def num_classes(self) -> int:
        return len(self.thing_classes)

    def table(self) -> str:
        """The summary as a plain-text table, for the log or the terminal."""
        name_width = max([len("class"), len("total")] + [len(c) for c in self.thing_classes])
        lines = [
            f"Dataset '{self.name}' ({self.source}): {self.num_images} images, "
            f"{self.num_classes} classes, {self.num_boxes} boxes",
            f"  {'id':>3}  {'class':<{name_width}}  {'boxes':>7}  {'crowd':>6}",
        ]
        for class_id, class_name in enumerate(self.thing_classes):
            lines.append(
                f"  {class_id:>3}  {class_name:<{name_width}}  "
                f"{self.boxes_per_class.get(class_name, 0):>7}  "
                f"{self.crowd_per_class.get(class_name, 0):>6}"
            )
        lines.append(
            f"  {'':>3}  {'total':<{name_width}}  {sum(self.boxes_per_class.values()):>7}  "
            f"{self.crowd_boxes:>6}"
        )
        dropped = ", ".join(f"{k} {v}" for k, v in self.dropped_by_reason.items() if v)
        lines += [
            f"  images without boxes: {self.images_without_boxes}",
            f"  clipped boxes:        {self.clipped_boxes}",
            f"  dropped boxes:        {self.dropped_boxes}" + (f" ({dropped})" if dropped else ""),
            f"  crowd boxes:          {self.crowd_boxes}",
            f"  size mismatches:      {self.size_mismatches} (annotation size replaced by "
            "the image's)",
            f"  format mismatches:    {self.format_mismatches} (extension differs from "
            "content; read by content)",
            f"  EXIF size mismatches: {self.exif_size_mismatches} (annotation size is the "
            "stored, un-rotated one)",
            f"  truncated images:     {len(self.truncated_images)} (read as far as they go)",
        ]
        if self.bad_images:
            lines.append(f"  unusable images:      {len(self.bad_images)} (cannot be decoded)")
        lines.append(f"  dropped images:       {len(self.dropped_images)}"
                     + (" (with their annotations; DATALOADER.SKIP_BAD_IMAGES)"
                        if self.dropped_images else ""))
        lines += _file_list(self.dropped_images)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _file_list(reasons: dict[str, str], limit: int = 10) -> list[str]:
    lines = [f"    {path}: {why}" for path, why in list(reasons.items())[:limit]]
    if len(reasons) > limit:
        lines.append(f"    ... and {len(reasons) - limit} more")
    return lines


def _as_xyxy(bbox: Sequence[float], bbox_mode: BoxMode) -> list[float]:
    if bbox_mode == BoxMode.XYXY_ABS:
        return [float(v) for v in bbox]
    if bbox_mode == BoxMode.XYWH_ABS:
        x, y, w, h = (float(v) for v in bbox)
        return [x, y, x + w, y + h]
    raise DatasetError(
        f"Unsupported bbox_mode {bbox_mode!r}: expected BoxMode.XYXY_ABS or BoxMode.XYWH_ABS."
    )


def _from_xyxy(box: list[float], bbox_mode: BoxMode) -> list[float]:
    if bbox_mode == BoxMode.XYWH_ABS:
        return [box[0], box[1], box[2] - box[0], box[3] - box[1]]
    return box


def _format_box(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def _drop_reason(box: list[float]) -> str | None:
    if not all(math.isfinite(v) for v in box):
        return "non-finite"
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        return "inverted"
    if x2 == x1 or y2 == y1:
        return "zero-area"
    return None


def validate_records(
    name: str,
    records: list[dict[str, Any]],
    thing_classes: Sequence[str],
    *,
    source: str = "",
) -> tuple[list[dict[str, Any]], DatasetSummary]:
    """Check and clean Detectron2 dataset dicts; see the module docstring for the rules.

    Args:
        name: the dataset's name, for messages.
        records: standard dataset dicts. ``height``/``width`` may be missing (taken from
            the image). Each record or annotation may carry a ``"_source"`` key
            (:data:`SOURCE_KEY`) saying where it came from; it is removed.
        thing_classes: class names, indexed by the contiguous ``category_id``.
        source: where the dataset came from, for the summary (e.g. ``"voc: /data/bccd"``).

    Returns:
        The cleaned records (new dicts; the input is not modified) and the summary. Records
        whose image cannot be read or decoded are left out, listed in the summary's
        ``bad_images``: the caller decides whether that stops the run.

    Raises:
        DatasetError: an image is missing, or a ``category_id`` is outside
            ``[0, len(thing_classes))``.
    """
    summary = DatasetSummary(
        name=name,
        source=source,
        thing_classes=list(thing_classes),
        boxes_per_class=dict.fromkeys(thing_classes, 0),
        crowd_per_class=dict.fromkeys(thing_classes, 0),
    )
    cleaned = [_validate_record(record, thing_classes, summary) for record in records]
    _log_problems(summary)
    log_truncated(summary.name, summary.truncated_images)
    return [record for record in cleaned if record is not None], summary


def log_truncated(name: str, files: Sequence[str]) -> None:
    """One warning that lists a dataset's truncated image files (at most
    :data:`MAX_WARNING_LINES` of them, then their count)."""
    if not files:
        return
    shown = "\n  ".join(files[:MAX_WARNING_LINES])
    more = (f"\n  ... and {len(files) - MAX_WARNING_LINES} more"
            if len(files) > MAX_WARNING_LINES else "")
    logger.warning(
        "Dataset '%s': %d truncated images (the file ends early, or is damaged: decoding stops "
        "before its end), read as far as they go, the rest left blank; replace them if you "
        "can:\n  %s%s", name, len(files), shown, more)


def _validate_record(
    record: dict[str, Any], thing_classes: Sequence[str], summary: DatasetSummary
) -> dict[str, Any] | None:
    """One record, checked and cleaned into a new dict; counts go to ``summary``. None
    where its image cannot be used (listed in ``summary.bad_images``)."""
    record = dict(record)
    record_source = str(record.pop(SOURCE_KEY, record.get("file_name", "?")))
    problems: list[str] = []
    try:
        header = _check_image(record, record_source, summary, problems)
    except UnreadableImageError as error:
        summary.bad_images[str(record["file_name"])] = str(error)
        return None
    kept = []
    for annotation in record.get("annotations", []):
        cleaned = _validate_annotation(
            annotation, record_source, thing_classes, header, summary, problems
        )
        if cleaned is not None:
            kept.append(cleaned)
    record["annotations"] = kept
    summary.num_images += 1
    if not kept:
        summary.images_without_boxes += 1
    if problems:
        summary.problems.setdefault(record_source, []).extend(problems)
    return record


def _check_image(
    record: dict[str, Any], record_source: str, summary: DatasetSummary, problems: list[str]
) -> ImageHeader:
    """Read the record's image header, note format, depth and size problems, and set the
    record's ``width``/``height`` to the image's own."""
    file_name = str(record["file_name"])
    header = read_image_header(file_name, referenced_by=record_source)
    if header.width * header.height <= DEFAULT_MAX_IMAGE_PIXELS and check_decodes(
            file_name, header, referenced_by=record_source):
        summary.truncated_images.append(file_name)
    extension = os.path.splitext(file_name)[1].lower()
    expected_format = _FORMATS_BY_EXTENSION.get(extension)
    if expected_format and header.format and header.format != expected_format:
        summary.format_mismatches += 1
        problems.append(
            f"image {file_name} is named '{extension}' but its content is "
            f"{header.format}; read by content"
        )
    if header.mode in _HIGH_DEPTH_MODES:
        problems.append(
            f"image {file_name} has {header.mode} pixels (16/32-bit): read as 8-bit RGB, "
            "scaled (16-bit: 0-65535 to 0-255), not clipped; convert it to 8-bit yourself "
            "for another mapping (e.g. a window)"
        )
    stated = (record.get("width"), record.get("height"))
    if stated != (None, None) and stated != (header.width, header.height):
        if stated == header.stored_size:
            summary.exif_size_mismatches += 1
            problems.append(
                f"annotation says size {stated[0]}x{stated[1]} (WxH), the stored size of "
                f"image {file_name}, but its EXIF orientation {header.orientation} rotates it "
                f"to {header.width}x{header.height} when read (as Detectron2 reads it): the "
                "boxes were probably drawn on the un-rotated pixels and will be wrong; "
                "re-save the image upright (orientation removed) or re-annotate it"
            )
        else:
            summary.size_mismatches += 1
            problems.append(
                f"annotation says size {stated[0]}x{stated[1]} (WxH) but image {file_name} "
                f"is {header.width}x{header.height}; using the image's size"
            )
    record["width"], record["height"] = header.width, header.height
    return header


def _validate_annotation(
    annotation: dict[str, Any],
    record_source: str,
    thing_classes: Sequence[str],
    header: ImageHeader,
    summary: DatasetSummary,
    problems: list[str],
) -> dict[str, Any] | None:
    """One annotation as a new dict with its box clipped to the image, or None if the box
    is dropped; counts go to ``summary``, what was changed to ``problems``."""
    annotation = dict(annotation)
    detail = annotation.pop(SOURCE_KEY, None)
    at = f"{detail}: " if detail else ""
    category_id = annotation["category_id"]
    if not 0 <= category_id < len(thing_classes):
        raise DatasetError(
            f"{record_source}: {at}category_id {category_id} is outside the dataset's "
            f"{len(thing_classes)} classes (expected 0..{len(thing_classes) - 1})."
        )
    class_name = thing_classes[category_id]
    bbox_mode = annotation.get("bbox_mode", BoxMode.XYXY_ABS)
    box = _as_xyxy(annotation["bbox"], bbox_mode)
    reason = _drop_reason(box)
    if reason is None:
        clipped = _clip_to_image(box, header)
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            reason = "outside image"
        elif clipped != box:
            summary.clipped_boxes += 1
            problems.append(
                f"{at}clipped {class_name} box {_format_box(box)} to the "
                f"{header.width}x{header.height} image: {_format_box(clipped)}"
            )
            annotation["bbox"] = _from_xyxy(clipped, bbox_mode)
    if reason is not None:
        summary.dropped_by_reason[reason] += 1
        problems.append(f"{at}dropped {reason} {class_name} box {_format_box(box)}")
        return None
    annotation["bbox_mode"] = bbox_mode
    annotation.setdefault("iscrowd", 0)
    if annotation["iscrowd"]:
        summary.crowd_per_class[class_name] += 1
    else:
        summary.boxes_per_class[class_name] += 1
    return annotation


def _clip_to_image(box: list[float], header: ImageHeader) -> list[float]:
    """An XYXY box clipped to ``[0, width] x [0, height]``."""
    return [
        min(max(box[0], 0.0), header.width),
        min(max(box[1], 0.0), header.height),
        min(max(box[2], 0.0), header.width),
        min(max(box[3], 0.0), header.height),
    ]


def _log_problems(summary: DatasetSummary) -> None:
    if not summary.problems:
        return
    for index, (where, whats) in enumerate(summary.problems.items()):
        if index == MAX_WARNING_LINES:
            logger.warning(
                "... and %d more files with problems in dataset '%s' (see the summary's "
                "'problems').", len(summary.problems) - MAX_WARNING_LINES, summary.name
            )
            break
        logger.warning("%s: %s", where, "; ".join(whats))
    dropped = ", ".join(f"{v} {k}" for k, v in summary.dropped_by_reason.items() if v)
    logger.warning(
        "Dataset '%s', files with problems: %d; boxes clipped to the image: %d; boxes "
        "dropped: %d%s; image sizes differing from the annotation: %d (%d of them the "
        "stored size before the EXIF rotation); image formats differing from the extension: "
        "%d.",
        summary.name, len(summary.problems), summary.clipped_boxes, summary.dropped_boxes,
        f" ({dropped})" if dropped else "",
        summary.size_mismatches + summary.exif_size_mismatches, summary.exif_size_mismatches,
        summary.format_mismatches,
    )
