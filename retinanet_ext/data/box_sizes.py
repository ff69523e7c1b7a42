"""Ground-truth boxes as arrays, at the size the model sees them (after the config's resize).

:func:`gather_boxes` turns validated dataset dicts into one :class:`GroundTruthBoxes`
(crowd regions left out: they are never trained on); :func:`resized` applies Detectron2's
``ResizeShortestEdge`` output size to them; :func:`box_size_table` is the per-class
size summary ``--check-data`` prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.structures import BoxMode

__all__ = ["GroundTruthBoxes", "box_size_table", "gather_boxes", "resized", "resized_shape"]


@dataclass
class GroundTruthBoxes:
    """The non-crowd boxes of a dataset.

    Attributes:
        boxes: float64[N, 4], absolute XYXY pixels of their image.
        classes: int64[N], contiguous class ids.
        image_index: int64[N], the box's image in ``image_sizes``.
        image_sizes: int64[M, 2], (height, width) of each image.
    """

    boxes: np.ndarray
    classes: np.ndarray
    image_index: np.ndarray
    image_sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def sizes(self) -> np.ndarray:
        """float64[N]: sqrt(area) of each box, pixels."""
        widths = self.boxes[:, 2] - self.boxes[:, 0]
        heights = self.boxes[:, 3] - self.boxes[:, 1]
        return np.sqrt(np.clip(widths, 0, None) * np.clip(heights, 0, None))

    @property
    def aspect_ratios(self) -> np.ndarray:
        """float64[N]: height / width of each box (Detectron2's anchor aspect ratio)."""
        widths = np.maximum(self.boxes[:, 2] - self.boxes[:, 0], 1e-6)
        return (self.boxes[:, 3] - self.boxes[:, 1]) / widths


def gather_boxes(records: Sequence[dict[str, Any]]) -> GroundTruthBoxes:
    """Stack the non-crowd boxes of validated records (``height``/``width`` present)."""
    boxes, classes, image_index, sizes = [], [], [], []
    for index, record in enumerate(records):
        sizes.append((int(record["height"]), int(record["width"])))
        for annotation in record.get("annotations", []):
            if annotation.get("iscrowd", 0):
                continue
            mode = annotation.get("bbox_mode", BoxMode.XYXY_ABS)
            boxes.append(BoxMode.convert(list(annotation["bbox"]), mode, BoxMode.XYXY_ABS))
            classes.append(int(annotation["category_id"]))
            image_index.append(index)
    return GroundTruthBoxes(
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        classes=np.asarray(classes, dtype=np.int64),
        image_index=np.asarray(image_index, dtype=np.int64),
        image_sizes=np.asarray(sizes, dtype=np.int64).reshape(-1, 2),
    )


def resized_shape(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """(height, width) after ``ResizeShortestEdge`` to ``short_edge`` (0: not resized)."""
    if short_edge <= 0:
        return height, width
    return ResizeShortestEdge.get_output_shape(height, width, short_edge, max_size)


def resized(gt: GroundTruthBoxes, short_edge: int | np.ndarray, max_size: int) -> GroundTruthBoxes:
    """The boxes and image sizes after resizing every image's shorter edge to ``short_edge``
    (one size, or int[M] one per image; longer edge at most ``max_size``), as Detectron2's
    ``ResizeShortestEdge`` does."""
    short_edges = np.broadcast_to(np.asarray(short_edge, dtype=np.int64), (len(gt.image_sizes),))
    new_sizes = np.asarray(
        [resized_shape(int(h), int(w), int(edge), max_size)
         for (h, w), edge in zip(gt.image_sizes, short_edges, strict=True)],
        dtype=np.int64,
    ).reshape(-1, 2)
    scale = new_sizes / np.maximum(gt.image_sizes, 1)  # (M, 2): y, x
    per_box = scale[gt.image_index]
    factors = np.stack([per_box[:, 1], per_box[:, 0], per_box[:, 1], per_box[:, 0]], axis=1)
    return GroundTruthBoxes(gt.boxes * factors, gt.classes, gt.image_index, new_sizes)


def box_size_table(
    gt: GroundTruthBoxes, thing_classes: Sequence[str], short_edge: int, max_size: int
) -> str:
    """Per class: boxes and min / median / max of sqrt(area) after the resize, in pixels."""
    sizes = resized(gt, short_edge, max_size).sizes
    resize = (f"shorter edge {short_edge}, longer at most {max_size}" if short_edge > 0
              else "no resize")
    name_width = max([len("class")] + [len(c) for c in thing_classes])
    lines = [f"  box size, sqrt(area) in pixels after the test-time resize ({resize}):",
             f"  {'id':>3}  {'class':<{name_width}}  {'boxes':>7}  {'min':>7}  {'median':>7}  "
             f"{'max':>7}"]
    for class_id, class_name in enumerate(thing_classes):
        values = sizes[gt.classes == class_id]
        stats = (f"{values.min():>7.1f}  {np.median(values):>7.1f}  {values.max():>7.1f}"
                 if len(values) else f"{'-':>7}  {'-':>7}  {'-':>7}")
        lines.append(f"  {class_id:>3}  {class_name:<{name_width}}  {len(values):>7}  {stats}")
    return "\n".join(lines)
