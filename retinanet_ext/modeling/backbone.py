"""RetinaNet's backbone: a ResNet bottom-up, Detectron2's FPN top-down and its P6/P7 block.

Paper, Sec. 4 ("Feature Pyramid Network Backbone"): P3-P5 from the FPN over C3-C5, P6 a
3x3 stride-2 conv on C5, P7 a 3x3 stride-2 conv on ReLU(P6); 256 channels throughout.

Built entirely from Detectron2's parts (``build_resnet_backbone``, ``FPN``,
``LastLevelP6P7``); this module adds the registered builder, the choice of P6's input
(``MODEL.RETINANET_EXT.P6_IN_FEATURE``) and checks that turn Detectron2's bare asserts into
messages naming the config key. Parameter names are therefore Detectron2's
(``bottom_up.*``, ``fpn_lateral{3,4,5}``, ``fpn_output{3,4,5}``, ``top_block.p6``,
``top_block.p7``): checkpoints of Detectron2's RetinaNet load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone, build_resnet_backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7

from retinanet_ext.modeling._cfg import retinanet_ext_node

__all__ = [
    "build_retinanet_ext_resnet_fpn_backbone",
    "check_fpn_inputs",
    "check_resnet_config",
    "p6_input_channels",
]


def check_resnet_config(cfg: CfgNode) -> None:
    """Fail early, with the fix, on ResNet settings Detectron2 rejects with a bare assert."""
    depth = cfg.MODEL.RESNETS.DEPTH
    if depth not in (18, 34, 50, 101, 152):
        raise ValueError(f"MODEL.RESNETS.DEPTH = {depth}: expected one of 18, 34, 50, 101, 152.")
    if depth in (18, 34) and cfg.MODEL.RESNETS.RES2_OUT_CHANNELS != 64:
        raise ValueError(
            f"MODEL.RESNETS.DEPTH = {depth} uses basic blocks: set "
            f"MODEL.RESNETS.RES2_OUT_CHANNELS to 64 (found {cfg.MODEL.RESNETS.RES2_OUT_CHANNELS})."
        )


def check_fpn_inputs(
    bottom_up_shapes: Mapping[str, ShapeSpec], in_features: Sequence[str], fuse_type: str
) -> None:
    """The FPN's inputs exist and their strides double from one to the next (what
    Detectron2's ``FPN`` asserts), explained in terms of the config keys."""
    missing = [name for name in in_features if name not in bottom_up_shapes]
    if not in_features or missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES = {list(in_features)}: expected bottom-up features among "
            f"MODEL.RESNETS.OUT_FEATURES = {sorted(bottom_up_shapes)}, e.g. "
            "['res3', 'res4', 'res5'] for both."
        )
    strides = [bottom_up_shapes[name].stride for name in in_features]
    if any(coarser != 2 * finer for finer, coarser in zip(strides[:-1], strides[1:], strict=True)):
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES = {list(in_features)} have strides {strides}; each must be "
            "twice the previous one."
        )
    if fuse_type not in ("sum", "avg"):
        raise ValueError(f"MODEL.FPN.FUSE_TYPE = {fuse_type!r}: expected 'sum' or 'avg'.")


def p6_input_channels(
    p6_in_feature: str,
    bottom_up_shapes: Mapping[str, ShapeSpec],
    in_features: Sequence[str],
    out_channels: int,
) -> int:
    """Channels of P6's input: a bottom-up feature (C5, "res5") or the last FPN level ("p5")."""
    last_level = f"p{int(math.log2(bottom_up_shapes[in_features[-1]].stride))}"
    if p6_in_feature == last_level:
        return out_channels
    if p6_in_feature in bottom_up_shapes:
        return bottom_up_shapes[p6_in_feature].channels
    raise ValueError(
        f"MODEL.RETINANET_EXT.P6_IN_FEATURE = {p6_in_feature!r}: expected the last pyramid "
        f"level {last_level!r} or a bottom-up feature in {sorted(bottom_up_shapes)} "
        "(usually 'res5')."
    )


@BACKBONE_REGISTRY.register()
def build_retinanet_ext_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """ResNet (``MODEL.RESNETS.*``) + FPN (``MODEL.FPN.*``) + P6/P7: features p3..p7.

    Detectron2's own ``build_retinanet_resnet_fpn_backbone`` always feeds P6 from C5; this
    builder also offers P5 and checks the settings first.

    Args:
        cfg: a config with :func:`retinanet_ext.add_retinanet_ext_config` applied.
        input_shape: the image shape (channels = ``len(MODEL.PIXEL_MEAN)``).

    Returns:
        Detectron2's ``FPN`` whose outputs are ``p3``..``p7`` (strides 8..128) for
        ``IN_FEATURES`` res3..res5.
    """
    check_resnet_config(cfg)
    bottom_up = build_resnet_backbone(cfg, input_shape)
    bottom_up_shapes = bottom_up.output_shape()
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    check_fpn_inputs(bottom_up_shapes, in_features, cfg.MODEL.FPN.FUSE_TYPE)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    p6_in_feature = retinanet_ext_node(cfg).P6_IN_FEATURE
    in_channels = p6_input_channels(p6_in_feature, bottom_up_shapes, in_features, out_channels)
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(in_channels, out_channels, in_feature=p6_in_feature),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
