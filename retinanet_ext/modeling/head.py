"""RetinaNet's head: classification and box subnets shared across pyramid levels, and its loss.

Paper, Sec. 4 ("Classification Subnet", "Box Regression Subnet") and 4.1
("Initialization"): per level, ``NUM_CONVS`` 3x3 convs with ReLU, then a 3x3 conv with
A*K (classes) or A*4 (box deltas) outputs; separate parameters for the two subnets, the same
for every level. Conv weights N(0, 0.01), biases 0, except the classifier's bias
-log((1 - pi) / pi) so every anchor starts with foreground probability pi.

Parameter names are Detectron2's (``cls_subnet.<i>``, ``bbox_subnet.<i>``, ``cls_score``,
``bbox_pred``). Heads are looked up in :data:`RETINANET_EXT_HEAD_REGISTRY` by
``MODEL.RETINANET_EXT.HEAD_NAME``; a replacement must offer :meth:`RetinaNetExtHead.forward`
and :meth:`RetinaNetExtHead.losses` with the same signatures (subclassing is easiest).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from retinanet_ext.modeling._cfg import get_registered, retinanet_ext_node
from retinanet_ext.modeling.losses import (
    BoxLoss,
    ClassificationLoss,
    EMALossNormalizer,
    LossNormalizer,
    SigmoidFocalLoss,
    SmoothL1BoxLoss,
    build_box_loss,
    build_classification_loss,
    build_loss_normalizer,
)

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.utils.events import get_event_storage
from detectron2.utils.registry import Registry
from torch import Tensor, nn

__all__ = [
    "RETINANET_EXT_HEAD_REGISTRY",
    "RetinaNetExtHead",
    "build_retinanet_ext_head",
    "flatten_dense_predictions",
    "prior_bias",
]

logger = logging.getLogger(__name__)

RETINANET_EXT_HEAD_REGISTRY = Registry("RETINANET_EXT_HEAD")
RETINANET_EXT_HEAD_REGISTRY.__doc__ = """
Dense heads for :class:`RetinaNetExt`, built as
``obj(cfg, input_shape: list[ShapeSpec], num_anchors: int)``.
"""


def prior_bias(prior_prob: float) -> float:
    """Classifier bias b with sigmoid(b) = prior_prob: b = -log((1 - pi) / pi) (Sec. 3.3)."""
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(f"MODEL.RETINANET.PRIOR_PROB must be in (0, 1), got {prior_prob}.")
    return -math.log((1 - prior_prob) / prior_prob)


def flatten_dense_predictions(per_level: Sequence[Tensor], dim_per_anchor: int) -> Tensor:
    """Concatenate per-level dense predictions into one anchor-major tensor.

    Args:
        per_level: per level, Tensor[N, A * D, H_i, W_i] (D = dim_per_anchor; channel
            a * D + d is value d of anchor a).
        dim_per_anchor: D, e.g. K classes or 4 box deltas.

    Returns:
        Tensor[N, R, D] with R = sum(H_i * W_i * A), in the anchor order of
        :class:`~retinanet_ext.modeling.anchors.RetinaNetExtAnchorGenerator` (level, row,
        column, anchor).
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


def _put_scalar_if_logging(name: str, value: float) -> None:
    """Log to Detectron2's EventStorage when one is active (in its trainer), else skip."""
    try:
        storage = get_event_storage()
    except (AssertionError, IndexError):
        return
    storage.put_scalar(name, value)


@RETINANET_EXT_HEAD_REGISTRY.register()
class RetinaNetExtHead(nn.Module):
    """Classification and box subnets, and the losses on their outputs."""

    @configurable
    def __init__(
        self,
        *,
        input_shape: Sequence[ShapeSpec],
        num_classes: int,
        num_anchors: int,
        conv_dims: Sequence[int],
        norm: str = "",
        prior_prob: float = 0.01,
        cls_loss: ClassificationLoss | None = None,
        box_loss: BoxLoss | None = None,
        loss_normalizer: LossNormalizer | None = None,
    ) -> None:
        """
        Args:
            input_shape: shapes of the input levels; all must have the same channels.
            num_classes: K, foreground classes (sigmoid outputs, no background class).
            num_anchors: A, anchors per location, the same on every level.
            conv_dims: output channels of each subnet conv before the predictors
                (paper: four of 256).
            norm: "" (paper) or "GN" after each subnet conv (shared across levels).
            prior_prob: pi, the initial foreground probability of every anchor.
            cls_loss: summed classification loss; default :class:`SigmoidFocalLoss` (0.25, 2).
            box_loss: summed box loss; default :class:`SmoothL1BoxLoss` with beta 0 (L1).
            loss_normalizer: divides both losses; default :class:`EMALossNormalizer`.
        """
        super().__init__()
        channels = {shape.channels for shape in input_shape}
        if len(channels) != 1:
            raise ValueError(
                f"RetinaNetExtHead shares its convs across levels, so every input level needs "
                f"the same channels; got {[shape.channels for shape in input_shape]}."
            )
        if norm in ("BN", "SyncBN"):
            raise ValueError(
                f"MODEL.RETINANET.NORM = {norm!r}: BatchNorm shared across pyramid levels is "
                "not supported by RetinaNetExtHead; use '' or 'GN'."
            )
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self._num_levels = len(input_shape)

        in_dims = [channels.pop(), *conv_dims[:-1]]
        self.cls_subnet = self._make_subnet(in_dims, conv_dims, norm)
        self.bbox_subnet = self._make_subnet(in_dims, conv_dims, norm)
        self.cls_score = nn.Conv2d(conv_dims[-1], num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(conv_dims[-1], num_anchors * 4, 3, padding=1)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_score.bias, prior_bias(prior_prob))

        self.cls_loss = cls_loss if cls_loss is not None else SigmoidFocalLoss()
        self.box_loss = box_loss if box_loss is not None else SmoothL1BoxLoss(beta=0.0)
        self.loss_normalizer = (
            loss_normalizer if loss_normalizer is not None else EMALossNormalizer()
        )

    @staticmethod
    def _make_subnet(in_dims: Sequence[int], out_dims: Sequence[int], norm: str) -> nn.Sequential:
        layers: list[nn.Module] = []
        for in_dim, out_dim in zip(in_dims, out_dims, strict=True):
            layers.append(nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=1, padding=1))
            if norm:
                layers.append(get_norm(norm, out_dim))
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    @classmethod
    def from_config(
        cls, cfg: CfgNode, input_shape: Sequence[ShapeSpec], num_anchors: int
    ) -> dict:
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "num_anchors": num_anchors,
            "conv_dims": [input_shape[0].channels] * cfg.MODEL.RETINANET.NUM_CONVS,
            "norm": cfg.MODEL.RETINANET.NORM,
            "prior_prob": cfg.MODEL.RETINANET.PRIOR_PROB,
            "cls_loss": build_classification_loss(cfg),
            "box_loss": build_box_loss(cfg),
            "loss_normalizer": build_loss_normalizer(cfg),
        }

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """
        Args:
            features: per level, Tensor[N, C, H_i, W_i], high to low resolution.

        Returns:
            logits: per level, Tensor[N, A * K, H_i, W_i] (sigmoid gives class probabilities).
            deltas: per level, Tensor[N, A * 4, H_i, W_i], (dx, dy, dw, dh) per anchor.
        """
        if len(features) != self._num_levels:
            raise ValueError(
                f"RetinaNetExtHead was built for {self._num_levels} levels, got {len(features)}."
            )
        logits = [self.cls_score(self.cls_subnet(feature)) for feature in features]
        deltas = [self.bbox_pred(self.bbox_subnet(feature)) for feature in features]
        return logits, deltas

    def losses(
        self,
        anchors: Tensor,
        pred_logits: Tensor,
        pred_deltas: Tensor,
        gt_labels: Tensor,
        gt_boxes: Tensor,
        box2box_transform: Box2BoxTransform,
    ) -> dict[str, Tensor]:
        """Classification loss over all non-ignored anchors, box loss over foreground ones,
        both divided by the loss normaliser.

        Args:
            anchors: Tensor[R, 4], XYXY pixels (all levels).
            pred_logits: Tensor[N, R, K], see :func:`flatten_dense_predictions`.
            pred_deltas: Tensor[N, R, 4].
            gt_labels: Tensor[N, R] int64 in {-1 (ignored), 0..K-1, K (background)}.
            gt_boxes: Tensor[N, R, 4], matched ground-truth boxes (used where foreground).
            box2box_transform: the box coding of ``pred_deltas``.

        Returns:
            ``{"loss_cls": Tensor[], "loss_box_reg": Tensor[]}``.
        """
        num_images = gt_labels.shape[0]
        valid = gt_labels >= 0
        foreground = valid & (gt_labels != self.num_classes)
        num_foreground = int(foreground.sum().item())
        _put_scalar_if_logging("num_pos_anchors", num_foreground / num_images)
        normalizer = self.loss_normalizer(num_foreground)

        valid_logits = pred_logits[valid]  # (M, K)
        valid_labels = gt_labels[valid]
        targets = torch.zeros_like(valid_logits)
        foreground_rows = torch.nonzero(valid_labels != self.num_classes).squeeze(1)
        targets[foreground_rows, valid_labels[foreground_rows]] = 1.0
        loss_cls = self.cls_loss(valid_logits, targets)

        foreground_anchors = anchors.expand(num_images, -1, -1)[foreground]  # (P, 4)
        loss_box_reg = self.box_loss(
            pred_deltas[foreground], gt_boxes[foreground], foreground_anchors, box2box_transform
        )
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}


def build_retinanet_ext_head(
    cfg: CfgNode, input_shape: Sequence[ShapeSpec], num_anchors: int
) -> nn.Module:
    """The head named by ``MODEL.RETINANET_EXT.HEAD_NAME``."""
    name = retinanet_ext_node(cfg).HEAD_NAME
    head_class = get_registered(RETINANET_EXT_HEAD_REGISTRY, name, "MODEL.RETINANET_EXT.HEAD_NAME")
    return head_class(cfg, input_shape, num_anchors)
