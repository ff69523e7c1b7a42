"""What goes into a detector and what comes out, shared by :class:`retinanet_ext.Predictor`
and the exported-model runtime (:mod:`retinanet_ext.export.runtime`).

* :func:`load_image_rgb`: any accepted input (path, numpy array, PIL image) as one
  np.ndarray[H, W, 3] uint8 RGB; :class:`ImageReadError` where that is not possible.
* :func:`read_image_file`: an image file as an upright RGB PIL image, whatever its kind
  (grayscale, palette, alpha, 16-bit, CMYK, WebP, TIFF, BMP), a truncated file as far as it
  goes, a decompression bomb refused before decoding; the training data mapper
  (:class:`retinanet_ext.data.mapper.ImageDatasetMapper`) reads with it too.
* :class:`Detections`: the detections of one image, as numpy arrays.

Imports only numpy (and Pillow when an image is read), so that the runtime keeps running
without torch or Detectron2.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "Detections", "ImageReadError", "ImageTooLargeError",
           "ReadImage", "load_image_rgb", "open_image", "read_image_file", "to_rgb"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
"""Images with more pixels are refused before a pixel is decoded: Pillow's own
``Image.MAX_IMAGE_PIXELS`` default, where it starts to warn of a decompression bomb (a
quarter GiB of 24-bit pixels, about 9459 x 9459); ``INPUT.MAX_IMAGE_PIXELS`` in a config."""

# What Pillow raises on a damaged file, depending on the plugin and where the damage is.
PILLOW_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError,
                      struct.error, ZeroDivisionError)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
# Pillow's switches are module-wide: changed for one read, under this lock, and put back.
_PILLOW_SETTINGS_LOCK = threading.RLock()


class ImageReadError(ValueError):
    """An input image could not be read or has an unsupported type or shape."""


class ImageTooLargeError(ImageReadError):
    """An image file declares more pixels than the limit; refused before decoding."""


class ReadImage(NamedTuple):
    """An image file as :func:`read_image_file` returns it."""

    image: Any  # PIL.Image.Image, mode "RGB", upright
    truncated: bool  # the file ends early: decoded as far as it goes, the rest left blank


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


def load_image_rgb(image: Any, rgb: bool = False, *,
                   max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
                   ) -> tuple[np.ndarray, str | None]:
    """An input as np.ndarray[H, W, 3] uint8 RGB, and its path if it was given as one.

    Args:
        image: a path (str or os.PathLike; read by :func:`read_image_file`: upright, any
            common kind, a truncated file with a warning), a numpy HxWx3 uint8 array (BGR
            as OpenCV reads it, or RGB when ``rgb``; HxW grayscale too) or a PIL image
            (converted by :func:`to_rgb`).
        rgb: numpy arrays are RGB rather than BGR.
        max_pixels: files declaring more pixels are refused before decoding
            (:class:`ImageTooLargeError`); None: no limit.

    Raises:
        ImageReadError: naming the file, for unreadable files and unsupported inputs.
    """
    from PIL import Image

    if isinstance(image, str | os.PathLike):
        path = os.fspath(image)
        read = read_image_file(path, max_pixels=max_pixels)
        if read.truncated:
            logger.warning("%s is truncated: read as far as it goes, the rest left blank", path)
        return np.asarray(read.image), path
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image)), None
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


@contextmanager
def _pillow_settings(*, load_truncated: bool = False,
                     lift_pixel_limit: bool = False) -> Iterator[None]:
    """Pillow's module-wide switches changed for the reads inside, and put back after them.

    Held under a lock, so that two such reads in threads of one process cannot restore each
    other's settings early; reads that need no switch (nearly all) never take it.
    """
    from PIL import Image, ImageFile

    with _PILLOW_SETTINGS_LOCK:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
        if load_truncated:
            ImageFile.LOAD_TRUNCATED_IMAGES = True
        if lift_pixel_limit:  # the caller checks the size itself before decoding
            Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = saved


def open_image(path: str) -> Any:
    """``PIL.Image.open(path)``: the header only, no pixel decoded, even past Pillow's own
    decompression-bomb refusal (the caller checks ``.size`` before ``.load()``).

    Raises:
        ImageReadError: the file is missing or is not an image Pillow can open.
    """
    from PIL import Image

    try:
        try:
            return Image.open(path)
        except Image.DecompressionBombError:  # Pillow's own limit: the size decides, ours
            with _pillow_settings(lift_pixel_limit=True):
                return Image.open(path)
    except FileNotFoundError as error:
        raise ImageReadError(f"{path}: image file not found") from error
    except PILLOW_READ_ERRORS as error:
        raise ImageReadError(f"{path}: cannot read image, not an image file Pillow can "
                             f"open ({error})") from error


def check_image_pixels(path: str, size: tuple[int, int], max_pixels: int | None) -> None:
    """Raise :class:`ImageTooLargeError` if an image of ``size`` (width, height) is over
    ``max_pixels`` (None: no limit)."""
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{path}: the image declares {width}x{height} = {width * height:,} pixels, more "
            f"than the limit of {max_pixels:,} (INPUT.MAX_IMAGE_PIXELS in a config); refused "
            "before decoding, as a possible decompression bomb. Raise the limit if the image "
            "is genuine.")


def read_image_file(path: str | os.PathLike, *,
                    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> ReadImage:
    """An image file, decoded, upright and as 8-bit RGB (see :func:`to_rgb`).

    The size in the header is checked against ``max_pixels`` before any pixel is decoded.
    EXIF orientation is applied, as Detectron2's ``read_image`` does. A file that ends early
    (a cut download) is decoded as far as it goes, with ``truncated`` set; only that retry
    sets Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES``, for the retry alone.

    Raises:
        ImageTooLargeError: over ``max_pixels``.
        ImageReadError: missing, not an image, or damaged beyond decoding; names the file.
    """
    path = os.fspath(path)
    with open_image(path) as image:
        check_image_pixels(path, image.size, max_pixels)
        try:
            image.load()
        except PILLOW_READ_ERRORS as error:
            first_error = error
        else:
            return ReadImage(to_rgb(_upright(image)), False)
    with _pillow_settings(load_truncated=True, lift_pixel_limit=True), open_image(
            path) as image:
        try:
            image.load()
        except PILLOW_READ_ERRORS as error:
            raise ImageReadError(f"{path}: cannot decode image, damaged beyond what can be "
                                 f"read ({first_error})") from error
        return ReadImage(to_rgb(_upright(image)), True)


def _upright(image: Any) -> Any:
    """A copy of a loaded image with its EXIF orientation applied; a damaged EXIF block is
    ignored, as Detectron2's ``read_image`` ignores it."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(image)  # a copy even where nothing turns
    except PILLOW_READ_ERRORS:
        return image.copy()


def to_rgb(image: Any) -> Any:
    """A PIL image of any mode as 8-bit RGB.

    16-bit grayscale (``I;16*``) is scaled, 0-65535 to 0-255, not clipped at 255 as
    ``Image.convert`` does; 32-bit ``I`` and float ``F`` by their range (:func:`_to_8_bit`).
    A palette with a transparent colour goes through RGBA first. Alpha is dropped, as
    Detectron2's ``read_image`` drops it; CMYK, grayscale and palettes convert as Pillow
    converts them.

    Raises:
        ImageReadError: a mode Pillow cannot convert to RGB.
    """
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        full_scale = 65535 if image.mode in _SIXTEEN_BIT_MODES else None
        return Image.fromarray(_to_8_bit(np.asarray(image), full_scale)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ImageReadError(f"cannot convert {image.mode} pixels to RGB ({error})") from error


def _to_8_bit(values: np.ndarray, full_scale: float | None) -> np.ndarray:
    """Pixel values as uint8, ``full_scale`` mapped to 255. Without one (32-bit int or float
    pixels) the range decides: values within 0-255 stay, floats within 0-1 are fractions,
    values within 0-65535 are 16-bit, anything else is stretched from its min to its max."""
    is_float = values.dtype.kind == "f"
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if full_scale is None:
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if is_float and low >= 0 and 0 < high <= 1:
            full_scale = 1.0
        elif low >= 0 and high <= 255:
            full_scale = 255.0
        elif low >= 0 and high <= 65535:
            full_scale = 65535.0
        else:
            values, full_scale = values - low, max(high - low, 1e-12)
    return np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
