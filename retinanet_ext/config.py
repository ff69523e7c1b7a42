"""The config keys retinanet_ext adds to Detectron2's defaults, in one place.

Detectron2's existing ``MODEL.RETINANET.*`` and ``MODEL.ANCHOR_GENERATOR.*`` keys are
reused wherever they mean the same thing; only what they cannot express is added here.
"""

from __future__ import annotations

from detectron2.config import CfgNode, get_cfg


def add_retinanet_ext_config(cfg: CfgNode) -> CfgNode:
    """Add retinanet_ext's keys, with their defaults, to ``cfg`` (in place); returns it."""
    cfg.MODEL.RETINANET_EXT = CfgNode()
    return cfg


def get_retinanet_ext_cfg() -> CfgNode:
    """Detectron2's default config plus retinanet_ext's keys."""
    return add_retinanet_ext_config(get_cfg())
