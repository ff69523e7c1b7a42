"""Config access for the modeling components, with errors that say what to do."""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.utils.registry import Registry


def retinanet_ext_node(cfg: CfgNode) -> CfgNode:
    """``cfg.MODEL.RETINANET_EXT``; raises if :func:`add_retinanet_ext_config` was not applied."""
    if "RETINANET_EXT" not in cfg.MODEL:
        raise KeyError(
            "cfg.MODEL.RETINANET_EXT is missing: build the config with "
            "retinanet_ext.get_retinanet_ext_cfg() or call "
            "retinanet_ext.add_retinanet_ext_config(cfg) before merging YAML files."
        )
    return cfg.MODEL.RETINANET_EXT


def get_registered(registry: Registry, name: str, key: str) -> type:
    """``registry.get(name)``; an unknown name raises naming the config ``key`` and the
    registered names."""
    try:
        return registry.get(name)
    except KeyError:
        available = sorted(registered for registered, _ in registry)
        raise KeyError(f"{key} = {name!r} is not registered; available: {available}.") from None
