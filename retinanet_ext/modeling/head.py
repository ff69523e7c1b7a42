"""RetinaNet's head: classification and box subnets shared across pyramid levels.

Paper, Sec. 4 ("Classification Subnet", "Box Regression Subnet") and 4.1
("Initialization"): per level, ``NUM_CONVS`` 3x3 convs with ReLU, then a 3x3 conv with
A*K (classes) or A*4 (box deltas) outputs; separate parameters for the two subnets, the same
for every level. Conv weights N(0, 0.01), biases 0, except the classifier's bias
-log((1 - pi) / pi) so every anchor starts with foreground probability pi.

The head is forward-only: matching, targets and losses belong to the meta-architecture's
criterion (:mod:`.criterion`). :class:`RetinaNetExtHead` is Detectron2's ``RetinaNetHead``
(same layers, initialisation, state-dict keys and per-level BatchNorm for ``"BN"`` /
``"SyncBN"``) built from our config contract; heads are looked up in
:data:`RETINANET_EXT_HEAD_REGISTRY` by ``MODEL.RETINANET_EXT.HEAD_NAME``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from retinanet_ext.modeling._cfg import get_registered, retinanet_ext_node

__all__ = [
    "RETINANET_EXT_HEAD_REGISTRY",
    "RetinaNetExtHead",
    "build_retinanet_ext_head",
    "flatten_dense_predictions",
    "group_norm",
    "prior_bias",
]

RETINANET_EXT_HEAD_REGISTRY = Registry("RETINANET_EXT_HEAD")
RETINANET_EXT_HEAD_REGISTRY.__doc__ = """
Dense heads for :class:`RetinaNetExt`, built as
``obj(cfg, input_shape: list[ShapeSpec], num_anchors: int)`` and called as
``head(features: list[Tensor[N, C, H_i, W_i]]) -> (logits, deltas)``, each a list of
``Tensor[N, A * K or A * 4, H_i, W_i]`` per level.
"""


def prior_bias(prior_prob: float) -> float:
    """Classifier bias b with sigmoid(b) = prior_prob: b = -log((1 - pi) / pi) (Sec. 3.3)."""
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(f"MODEL.RETINANET.PRIOR_PROB must be in (0, 1), got {prior_prob}.")
    return -math.log((1 - prior_prob) / prior_prob)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, as ``get_norm("GN", channels)``.

    Passed to Detectron2's head as a callable because Detectron2 v0.6 probes the norm with
    one channel (``get_norm(norm, 1)``), which fails for the string "GN"; the group count
    is the largest divisor of ``channels`` up to 32, so the probe builds too.
    """
    return nn.GroupNorm(math.gcd(32, channels), channels)


def flatten_dense_predictions(per_level: Sequence[Tensor], dim_per_anchor: int) -> Tensor:
    """Concatenate per-level dense predictions into one anchor-major tensor.

    Args:
        per_level: per level, Tensor[N, A * D, H_i, W_i] (D = dim_per_anchor; channel
            a * D + d is value d of anchor a).
        dim_per_anchor: D, e.g. K classes or 4 box deltas.

    Returns:
        Tensor[N, R, D] with R = sum(H_i * W_i * A), in the anchor order of the anchor
        generator (level, row, column, anchor).
    """
    batch = per_level[0].shape[0]
    flat_levels = []
    for prediction in per_level:
        _, channels, height, width = prediction.shape
        flat_levels.append(
            prediction.view(batch, channels // dim_per_anchor, dim_per_anchor, height, width)
            .permute(0, 3, 4, 1, 2)
            .reshape(batch, -1, dim_per_anchor)
        )
    # Plain concatenation: its backward only slices the gradient (writing the levels into
    # one preallocated tensor would save a forward copy but clone the gradient per level).
    return torch.cat(flat_levels, dim=1)


@RETINANET_EXT_HEAD_REGISTRY.register()
class RetinaNetExtHead(RetinaNetHead):
    """Detectron2's ``RetinaNetHead``, built from ``(cfg, input_shape, num_anchors)``.

    Construct by hand with Detectron2's keyword arguments: ``input_shape``,
    ``num_classes``, ``num_anchors``, ``conv_dims`` (output channels of each subnet conv;
    paper: four of 256), ``norm`` ("" as in the paper, "GN", or "BN"/"SyncBN" with one
    BatchNorm per level), ``prior_prob``.
    """

    @configurable
    def __init__(self, *, norm: str | Callable[[int], nn.Module] = "", **kwargs) -> None:
        # "GN" as a callable: Detectron2 v0.6's head cannot build the string (see group_norm).
        super().__init__(norm=group_norm if norm == "GN" else norm, **kwargs)

    @classmethod
    def from_config(
        cls, cfg: CfgNode, input_shape: Sequence[ShapeSpec], num_anchors: int
    ) -> dict:
        channels = [shape.channels for shape in input_shape]
        if len(set(channels)) != 1:
            raise ValueError(
                "The head shares its convs across levels, so every input level needs the same "
                f"channels; MODEL.RETINANET.IN_FEATURES have {channels}."
            )
        prior_bias(cfg.MODEL.RETINANET.PRIOR_PROB)  # checks the range
        return {
            "input_shape": list(input_shape),
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "num_anchors": num_anchors,
            "conv_dims": [channels[0]] * cfg.MODEL.RETINANET.NUM_CONVS,
            "norm": cfg.MODEL.RETINANET.NORM,
            "prior_prob": cfg.MODEL.RETINANET.PRIOR_PROB,
        }


def build_retinanet_ext_head(
    cfg: CfgNode, input_shape: Sequence[ShapeSpec], num_anchors: int
) -> nn.Module:
    """The head named by ``MODEL.RETINANET_EXT.HEAD_NAME``."""
    name = retinanet_ext_node(cfg).HEAD_NAME
    head_class = get_registered(RETINANET_EXT_HEAD_REGISTRY, name, "MODEL.RETINANET_EXT.HEAD_NAME")
    return head_class(cfg, input_shape, num_anchors)
