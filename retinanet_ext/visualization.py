"""Boxes drawn on images: the one drawing implementation of the package.

Predictions (``retinanet-ext predict``, the demo) and ground truth use :func:`draw_boxes`.
Colours come from Detectron2's public colour map, one per class id, so a class keeps its
colour across images and runs. Line width and text size follow the image size, and small
images are enlarged first, so labels stay legible on a 128 px thumbnail and a 4K photo.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["class_color", "draw_boxes"]


def class_color(class_id: int) -> tuple[int, int, int]:
    """The RGB colour of ``class_id`` (Detectron2's colour map, cycled)."""
    from detectron2.utils.colormap import colormap

    colors = colormap(rgb=True, maximum=255)
    return tuple(int(c) for c in colors[int(class_id) % len(colors)])


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (ITU-R BT.601 luma)."""
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _label(class_id: int, class_names: Sequence[str], score: float | None) -> str:
    name = class_names[class_id] if 0 <= class_id < len(class_names) else f"class_{class_id}"
    return name if score is None else f"{name} {score:.2f}"


def draw_boxes(
    image_rgb: np.ndarray,
    boxes: np.ndarray,
    class_ids: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    scores: Sequence[float] | np.ndarray | None = None,
    *,
    min_size: int = 512,
) -> np.ndarray:
    """Draw labelled boxes on a copy of an image.

    Args:
        image_rgb: np.ndarray[H, W, 3] uint8, RGB.
        boxes: np.ndarray[N, 4], absolute XYXY pixels of ``image_rgb``.
        class_ids: N class indices into ``class_names`` (``class_<id>`` where out of range).
        class_names: the model's class names.
        scores: N scores shown beside the names (None for ground truth).
        min_size: an image whose longer side is shorter than this is enlarged to it
            (boxes with it) before drawing, so text stays readable; 0 keeps the size.

    Returns:
        np.ndarray[H', W', 3] uint8 RGB: the image (enlarged by ``min_size`` if small) with
        one rectangle and one ``name score`` label per box, in the class's colour; boxes
        are drawn lowest score first, so the best ones stay on top.
    """
    import cv2

    image = np.ascontiguousarray(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"draw_boxes wants an HxWx3 uint8 RGB image, got {image.dtype} "
                         f"{image.shape}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
    if len(class_ids) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
        raise ValueError("draw_boxes: boxes, class_ids and scores must have the same length")
    scale = max(1.0, min_size / max(image.shape[:2])) if min_size else 1.0
    if scale > 1.0:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        boxes = boxes * scale
    canvas = image.copy()
    long_side = max(canvas.shape[:2])
    thickness = max(1, round(long_side / 400))
    font_scale = max(0.4, long_side / 1300)
    order = np.argsort(scores, kind="stable") if scores is not None else range(len(boxes))
    for i in order:
        color = class_color(class_ids[i])
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness, cv2.LINE_8)
        text = _label(int(class_ids[i]), class_names,
                      None if scores is None else float(scores[i]))
        _draw_label(canvas, text, (x1, y1), color, font_scale, thickness)
    return canvas


def _draw_label(
    canvas: np.ndarray,
    text: str,
    corner: tuple[int, int],
    color: tuple[int, int, int],
    font_scale: float,
    thickness: int,
) -> None:
    """A filled label at a box's top-left corner: above the box, or inside where no room."""
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    text_thickness = max(1, thickness // 2)
    (width, height), baseline = cv2.getTextSize(text, font, font_scale, text_thickness)
    pad = max(1, thickness)
    x = min(max(corner[0], 0), max(0, canvas.shape[1] - width - 2 * pad))
    top = corner[1] - height - baseline - 2 * pad
    if top < 0:  # no room above the box: inside it, under its top edge
        top = max(corner[1], 0)
    bottom = min(top + height + baseline + 2 * pad, canvas.shape[0] - 1)
    cv2.rectangle(canvas, (x, top), (x + width + 2 * pad, bottom), color, -1)
    cv2.putText(canvas, text, (x + pad, bottom - baseline - pad), font, font_scale,
                _text_color(color), text_thickness, cv2.LINE_AA)
