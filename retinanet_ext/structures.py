"""What goes into a detector and what comes out, shared by :class:`retinanet_ext.Predictor`
and the exported-model runtime (:mod:`retinanet_ext.export.runtime`).

* :func:`load_image_rgb`: any accepted input (path, numpy array, PIL image) as one
  np.ndarray[H, W, 3] uint8 RGB; :class:`ImageReadError` where that is not possible.
* :class:`Detections`: the detections of one image, as numpy arrays.

Imports only numpy (and Pillow when an image is read), so that the runtime keeps running
without torch or Detectron2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Detections", "ImageReadError", "load_image_rgb"]


class ImageReadError(ValueError):
    """An input image could not be read or has an unsupported type or shape."""


@dataclass
class Detections:
    """The detections of one image, best first.

    Attributes:
        boxes: np.ndarray[D, 4] float32, XYXY in the input image's pixels.
        scores: np.ndarray[D] float32, in (score threshold, 1].
        class_ids: np.ndarray[D] int64, 0-based model class indices.
        class_names: D names, ``class_names[i]`` of detection i.
        image_size: (height, width) of the input image.
        file_name: the input's path, when it was given as one.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_names: list[str]
    image_size: tuple[int, int]
    file_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def to_coco(self, image_id: int) -> list[dict[str, Any]]:
        """COCO results entries (``bbox`` as x, y, width, height) plus the names."""
        out = []
        for box, score, class_id, name in zip(
            self.boxes.tolist(), self.scores.tolist(), self.class_ids.tolist(),
            self.class_names, strict=True
        ):
            x1, y1, x2, y2 = box
            entry = {"image_id": image_id, "category_id": class_id,
                     "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score,
                     "category_name": name}
            if self.file_name is not None:
                entry["file_name"] = self.file_name
            out.append(entry)
        return out


def load_image_rgb(image: Any, rgb: bool = False) -> tuple[np.ndarray, str | None]:
    """An input as np.ndarray[H, W, 3] uint8 RGB, and its path if it was given as one.

    Args:
        image: a path (str or os.PathLike), a numpy HxWx3 uint8 array (BGR as OpenCV
            reads it, or RGB when ``rgb``; HxW grayscale too) or a PIL image.
        rgb: numpy arrays are RGB rather than BGR.

    Raises:
        ImageReadError: naming the file, for unreadable files and unsupported inputs.
    """
    from PIL import Image, ImageOps

    if isinstance(image, str | os.PathLike):
        path = os.fspath(image)
        try:
            with Image.open(path) as opened:
                return np.asarray(ImageOps.exif_transpose(opened).convert("RGB")), path
        except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for bad files
            raise ImageReadError(f"{path}: cannot read image ({error})") from error
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB")), None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageReadError(f"numpy images must be uint8 (0-255), got {image.dtype}; "
                                 "convert with .astype(np.uint8)")
        if image.ndim == 2:
            return np.repeat(image[:, :, None], 3, axis=2), None
        if image.ndim != 3 or image.shape[2] != 3:
            raise ImageReadError(f"numpy images must be HxWx3 (or HxW), got {image.shape}")
        return np.ascontiguousarray(image if rgb else image[:, :, ::-1]), None
    raise ImageReadError(f"unsupported image input of type {type(image).__name__}: give a "
                         "path, a numpy HxWx3 uint8 array or a PIL image")
