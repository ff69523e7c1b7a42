"""A tiny RetinaNet checkpoint with confident detections, for the predict/export tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICK_CONFIG = str(REPO_ROOT / "configs" / "retinanet_R18_FPN_quick.yaml")
CLASSES = ("circle", "square", "ring")
# ResNet-18 with a 32-channel FPN at 160-224 px: a forward pass takes ~0.1 s on CPU.
TINY_OPTS = [
    "MODEL.FPN.OUT_CHANNELS", "32", "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "224",
    "MODEL.RETINANET.SCORE_THRESH_TEST", "0.3", "DATASETS.TEST", "()", "MODEL.DEVICE", "cpu",
]


def write_tiny_checkpoint(path: Path, classes: Sequence[str] | None = CLASSES,
                          seed: int = 0) -> Path:
    """Random weights, with the classification subnet nudged (He-initialised convs,
    classifier weights N(0, 0.1), bias -5) so that scores spread over 0.01-0.9: 20-50
    detections per image at threshold 0.3, under the 100-per-image cap. With ``classes``
    the checkpoint carries the Trainer's metadata entry."""
    from detectron2.modeling import build_model

    from retinanet_ext.engine import load_config

    torch.manual_seed(seed)
    model = build_model(load_config(QUICK_CONFIG, TINY_OPTS))
    with torch.no_grad():
        for module in model.head.cls_subnet.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        torch.nn.init.normal_(model.head.cls_score.weight, std=0.1)
        torch.nn.init.constant_(model.head.cls_score.bias, -5.0)
    checkpoint = {"model": model.state_dict(), "iteration": 7}
    if classes is not None:
        checkpoint["retinanet_ext_metadata"] = {
            "thing_classes": list(classes), "input_format": "BGR", "datasets": ["shapes"],
            "version": 1}
    torch.save(checkpoint, path)
    return path


def sample_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 image with some structure (blocks of colour)."""
    from retinanet_ext.export.verify import sample_images

    return sample_images([(height, width)], seed=seed)[0]
