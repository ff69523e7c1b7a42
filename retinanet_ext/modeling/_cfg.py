"""Access to the ``MODEL.RETINANET_EXT`` config node, with an error that says what to do."""

from __future__ import annotations

from detectron2.config import CfgNode


def retinanet_ext_node(cfg: CfgNode) -> CfgNode:
    """``cfg.MODEL.RETINANET_EXT``; raises if :func:`add_retinanet_ext_config` was not applied."""
    if "RETINANET_EXT" not in cfg.MODEL:
        raise KeyError(
            "cfg.MODEL.RETINANET_EXT is missing: build the config with "
            "retinanet_ext.get_retinanet_ext_cfg() or call "
            "retinanet_ext.add_retinanet_ext_config(cfg) before merging YAML files."
        )
    return cfg.MODEL.RETINANET_EXT
