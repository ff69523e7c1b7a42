"""Helpers shared by the modeling tests: configs for our RetinaNet and Detectron2's, inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg
from detectron2.structures import Boxes, Instances

from retinanet_ext import add_retinanet_ext_config
from retinanet_ext.config import use_retinanet_ext_components


def retinanet_cfg(ours: bool, depth: int = 18, num_classes: int = 80) -> CfgNode:
    """Detectron2's COCO RetinaNet R-50 config (CPU, no weights) at ``depth``; with
    ``ours``, only the three component names are switched to retinanet_ext's."""
    cfg = get_cfg()
    add_retinanet_ext_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = depth
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    if ours:
        use_retinanet_ext_components(cfg)
    return cfg


def make_instances(
    image_size: tuple[int, int], boxes: Sequence[Sequence[float]], classes: Sequence[int]
) -> Instances:
    """Ground truth for one image: XYXY ``boxes`` and their ``classes``."""
    instances = Instances(image_size)
    instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return instances


def random_image(height: int, width: int, seed: int) -> torch.Tensor:
    """A Tensor[3, H, W] of uniform noise in [0, 255), reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(3, height, width, generator=generator) * 255
