"""Small helpers shared by the dataset-format tests."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image


def blank_image(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    """A one-colour RGB image of ``size`` (width, height) at ``path``, folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 140, 30)).save(path)
    return path


def data_warnings(caplog) -> list[str]:
    """The warnings ``retinanet_ext.data`` logged."""
    return [r.getMessage() for r in caplog.records
            if r.name == "retinanet_ext.data" and r.levelno == logging.WARNING]
