"""RetinaNet's backbone: a ResNet bottom-up, an FPN top-down pathway and the P6/P7 block.

Paper, Sec. 4 ("Feature Pyramid Network Backbone"): P3-P5 from the FPN over C3-C5, P6 a
3x3 stride-2 conv on C5, P7 a 3x3 stride-2 conv on ReLU(P6); 256 channels throughout.

Parameter names are Detectron2's (``bottom_up.*``, ``fpn_lateral{3,4,5}``,
``fpn_output{3,4,5}``, ``top_block.p6``, ``top_block.p7``), so checkpoints of
Detectron2's RetinaNet, and ImageNet ResNet weights for ``bottom_up``, load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from retinanet_ext.modeling._cfg import retinanet_ext_node

import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone, build_resnet_backbone
from fvcore.nn import weight_init
from torch import Tensor, nn

__all__ = [
    "P6P7Block",
    "RetinaNetExtFPN",
    "build_retinanet_ext_resnet_fpn_backbone",
    "check_resnet_config",
]


class P6P7Block(nn.Module):
    """The two extra pyramid levels of RetinaNet: P6 = conv(x), P7 = conv(ReLU(P6)).

    Both convs are 3x3 with stride 2, so P6 and P7 have strides 64 and 128 when ``x`` is
    C5 or P5 (stride 32).
    """

    num_levels: int = 2

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5") -> None:
        """
        Args:
            in_channels: channels of the input feature (C5: 2048 for ResNet-50; P5: FPN width).
            out_channels: channels of P6 and P7.
            in_feature: name of the input, a bottom-up feature ("res5") or an FPN
                output ("p5").
        """
        super().__init__()
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=2, padding=1)
        for conv in (self.p6, self.p7):
            weight_init.c2_xavier_fill(conv)

    def forward(self, x: Tensor) -> list[Tensor]:
        """
        Args:
            x: Tensor[N, C_in, H, W].

        Returns:
            [P6: Tensor[N, C_out, ceil(H/2), ceil(W/2)], P7: Tensor[N, C_out, ceil(H/4), ...]].
        """
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


class RetinaNetExtFPN(Backbone):
    """Feature pyramid over a bottom-up backbone, plus an optional top block (P6/P7).

    Top-down pathway (FPN paper, Sec. 3): a 1x1 lateral conv on each input feature, the
    coarser merged map upsampled 2x (nearest) and added, then a 3x3 output conv. Output
    names are ``p<log2(stride)>``: ``p3``..``p7`` for RetinaNet.
    """

    @configurable
    def __init__(
        self,
        *,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int,
        norm: str = "",
        fuse_type: str = "sum",
        top_block: nn.Module | None = None,
    ) -> None:
        """
        Args:
            bottom_up: produces the features named in ``in_features``.
            in_features: bottom-up feature names, high to low resolution, strides doubling
                (e.g. ``["res3", "res4", "res5"]``).
            out_channels: channels of every pyramid level.
            norm: normalisation after the lateral and output convs ("" for none; then
                the convs have biases), any name :func:`detectron2.layers.get_norm` knows.
            fuse_type: "sum" (FPN paper) or "avg" (the sum halved) to merge a lateral
                with the upsampled coarser level.
            top_block: extra levels after the last one (e.g. :class:`P6P7Block`); it
                needs attributes ``in_feature`` (a bottom-up or pyramid feature name)
                and ``num_levels``.
        """
        super().__init__()
        if not isinstance(bottom_up, Backbone):
            raise TypeError(
                f"RetinaNetExtFPN: bottom_up must be a detectron2 Backbone, got {type(bottom_up)}"
            )
        if fuse_type not in ("sum", "avg"):
            raise ValueError(
                f"RetinaNetExtFPN: fuse_type must be 'sum' or 'avg', got {fuse_type!r}."
            )
        input_shapes = bottom_up.output_shape()
        missing = [name for name in in_features if name not in input_shapes]
        if not in_features or missing:
            raise ValueError(
                f"RetinaNetExtFPN: in_features {list(in_features)} must be non-empty and "
                f"produced by the bottom-up network, which gives {sorted(input_shapes)} "
                "(for ResNet set MODEL.RESNETS.OUT_FEATURES to include MODEL.FPN.IN_FEATURES)."
            )
        strides = [input_shapes[name].stride for name in in_features]
        for finer, coarser in zip(strides[:-1], strides[1:], strict=True):
            if coarser != 2 * finer:
                raise ValueError(
                    f"RetinaNetExtFPN: strides of in_features {list(in_features)} are "
                    f"{strides}; each must be twice the previous one."
                )

        self.bottom_up = bottom_up
        self.in_features = tuple(in_features)
        self._fuse_type = fuse_type
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        stages = [int(math.log2(stride)) for stride in strides]
        for name, stage in zip(in_features, stages, strict=True):
            lateral = Conv2d(
                input_shapes[name].channels,
                out_channels,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            output = Conv2d(
                out_channels,
                out_channels,
                kernel_size=3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{stage}", lateral)
            self.add_module(f"fpn_output{stage}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # Plain lists (the modules are registered above under Detectron2's names).
        self._lateral_convs = lateral_convs
        self._output_convs = output_convs

        self.top_block = top_block
        self._out_feature_strides = {f"p{stage}": 2**stage for stage in stages}
        if top_block is not None:
            last = stages[-1]
            for extra in range(1, top_block.num_levels + 1):
                self._out_feature_strides[f"p{last + extra}"] = 2 ** (last + extra)
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {name: out_channels for name in self._out_features}
        # Top-down merging needs C_i exactly twice C_{i+1}: pad inputs to the coarsest
        # bottom-up stride (P6/P7 use stride-2 convs with padding, which need no more).
        self._size_divisibility = strides[-1]

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict:
        check_resnet_config(cfg)
        bottom_up = build_resnet_backbone(cfg, input_shape)
        out_channels = cfg.MODEL.FPN.OUT_CHANNELS
        p6_in_feature = retinanet_ext_node(cfg).P6_IN_FEATURE
        in_features = cfg.MODEL.FPN.IN_FEATURES
        bottom_up_shapes = bottom_up.output_shape()
        if not in_features or in_features[-1] not in bottom_up_shapes:
            raise ValueError(
                f"MODEL.FPN.IN_FEATURES = {list(in_features)}: expected bottom-up features "
                f"among MODEL.RESNETS.OUT_FEATURES = {sorted(bottom_up_shapes)}, e.g. "
                "['res3', 'res4', 'res5'] for both."
            )
        last_stride = bottom_up_shapes[in_features[-1]].stride
        last_pyramid_level = f"p{int(math.log2(last_stride))}"
        if p6_in_feature == last_pyramid_level:
            p6_in_channels = out_channels
        elif p6_in_feature in bottom_up_shapes:
            p6_in_channels = bottom_up_shapes[p6_in_feature].channels
        else:
            raise ValueError(
                f"MODEL.RETINANET_EXT.P6_IN_FEATURE = {p6_in_feature!r}: expected the last "
                f"pyramid level {last_pyramid_level!r} or a bottom-up feature in "
                f"{sorted(bottom_up_shapes)} (usually 'res5')."
            )
        return {
            "bottom_up": bottom_up,
            "in_features": in_features,
            "out_channels": out_channels,
            "norm": cfg.MODEL.FPN.NORM,
            "fuse_type": cfg.MODEL.FPN.FUSE_TYPE,
            "top_block": P6P7Block(p6_in_channels, out_channels, in_feature=p6_in_feature),
        }

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"size_divisibility": self._size_divisibility}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """
        Args:
            x: Tensor[N, 3, H, W], normalised images, H and W divisible by
                :attr:`size_divisibility`.

        Returns:
            ``{"p3": Tensor[N, C, H/8, W/8], ..., "p7": Tensor[N, C, H/128, W/128]}``
            (sizes rounded up), high to low resolution.
        """
        bottom_up_features = self.bottom_up(x)
        merged = self._lateral_convs[-1](bottom_up_features[self.in_features[-1]])
        pyramid = [self._output_convs[-1](merged)]
        for level in range(len(self.in_features) - 2, -1, -1):
            lateral = self._lateral_convs[level](bottom_up_features[self.in_features[level]])
            top_down = F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            merged = lateral + top_down
            if self._fuse_type == "avg":
                merged = merged / 2
            pyramid.insert(0, self._output_convs[level](merged))

        if self.top_block is not None:
            name = self.top_block.in_feature
            if name in bottom_up_features:
                top_input = bottom_up_features[name]
            else:
                top_input = pyramid[self._out_features.index(name)]
            pyramid.extend(self.top_block(top_input))
        return dict(zip(self._out_features, pyramid, strict=True))

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


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


@BACKBONE_REGISTRY.register()
def build_retinanet_ext_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """ResNet (``MODEL.RESNETS.*``) + FPN (``MODEL.FPN.*``) + P6/P7: features p3..p7.

    Args:
        cfg: a config with :func:`retinanet_ext.add_retinanet_ext_config` applied.
        input_shape: the image shape (channels = ``len(MODEL.PIXEL_MEAN)``).
    """
    return RetinaNetExtFPN(cfg, input_shape)

