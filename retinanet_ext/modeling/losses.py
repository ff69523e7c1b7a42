"""RetinaNet's losses: pure functions of tensors, and registries to pick them by config.

* Classification (``MODEL.RETINANET_EXT.CLS_LOSS_NAME``, ``RETINANET_EXT_CLS_LOSS_REGISTRY``):
  sigmoid focal loss (paper, Eq. 5; fvcore's, as Detectron2 uses), alpha-balanced and plain
  binary cross-entropy, and the IoU-aware quality focal loss (Li et al. 2020) and varifocal
  loss (Zhang et al. 2021).
* Box regression (``MODEL.RETINANET.BBOX_REG_LOSS_TYPE``, ``RETINANET_EXT_BOX_LOSS_REGISTRY``):
  smooth L1 on (dx, dy, dw, dh) deltas (fvcore's), GIoU (fvcore's), DIoU and CIoU
  (Detectron2's) on decoded boxes: the same four names as Detectron2's RetinaNet.
* Normaliser (``MODEL.RETINANET_EXT.LOSS_NORMALIZER``,
  ``RETINANET_EXT_LOSS_NORMALIZER_REGISTRY``): what the summed losses are divided by.

Registered objects are built as ``REGISTRY.get(name)(cfg)`` and called on tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers.losses import ciou_loss, diou_loss
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.utils.registry import Registry
from fvcore.nn import giou_loss, sigmoid_focal_loss, smooth_l1_loss
from torch import Tensor

from retinanet_ext.modeling._cfg import get_registered, retinanet_ext_node
from retinanet_ext.modeling.matching import AnchorTargets

__all__ = [
    "RETINANET_EXT_BOX_LOSS_REGISTRY",
    "RETINANET_EXT_CLS_LOSS_REGISTRY",
    "RETINANET_EXT_LOSS_NORMALIZER_REGISTRY",
    "AlphaBalancedBCELoss",
    "BCELoss",
    "BoxLoss",
    "ClassificationLoss",
    "DecodedBoxLoss",
    "EMALossNormalizer",
    "ForegroundCountLossNormalizer",
    "GIoUBoxLoss",
    "LossNormalizer",
    "QualityFocalLoss",
    "SigmoidFocalLoss",
    "SmoothL1BoxLoss",
    "VarifocalLoss",
    "build_box_loss",
    "build_classification_loss",
    "build_loss_normalizer",
    "giou_loss",
    "quality_focal_loss",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "varifocal_loss",
]

RETINANET_EXT_CLS_LOSS_REGISTRY = Registry("RETINANET_EXT_CLS_LOSS")
RETINANET_EXT_CLS_LOSS_REGISTRY.__doc__ = """
Classification losses, built as ``obj(cfg)`` and called as
``loss(logits: Tensor[N, R, K], targets: AnchorTargets) -> Tensor[]`` (summed over the
anchors the loss covers, usually ``targets.valid``). A loss whose class attribute
``needs_prediction_iou`` is True gets ``targets.pred_iou`` filled by the criterion.
Chosen by ``MODEL.RETINANET_EXT.CLS_LOSS_NAME``.
"""

RETINANET_EXT_BOX_LOSS_REGISTRY = Registry("RETINANET_EXT_BOX_LOSS")
RETINANET_EXT_BOX_LOSS_REGISTRY.__doc__ = """
Box regression losses, built as ``obj(cfg)`` and called as
``loss(pred_deltas: Tensor[P, 4], gt_boxes: Tensor[P, 4], anchors: Tensor[P, 4],
box2box_transform) -> Tensor[]`` (the sum over the P foreground anchors). Chosen by
``MODEL.RETINANET.BBOX_REG_LOSS_TYPE``: "smooth_l1", "giou", "diou", "ciou" or a registered name.
"""

RETINANET_EXT_LOSS_NORMALIZER_REGISTRY = Registry("RETINANET_EXT_LOSS_NORMALIZER")
RETINANET_EXT_LOSS_NORMALIZER_REGISTRY.__doc__ = """
Loss normalisers, built as ``obj(cfg)`` and called once per training step as
``normalizer(num_foreground: int) -> float``. Chosen by ``MODEL.RETINANET_EXT.LOSS_NORMALIZER``.
"""

# Detectron2's values of MODEL.RETINANET.BBOX_REG_LOSS_TYPE and the classes that implement them.
_BOX_LOSS_TYPES = {
    "smooth_l1": "SmoothL1BoxLoss",
    "giou": "GIoUBoxLoss",
    "diou": "DIoUBoxLoss",
    "ciou": "CIoUBoxLoss",
}


class _ReadsNoConfig:
    """Base of registered components with no settings: built as ``obj(cfg)`` (or ``obj()``)
    like every registered component, reading nothing from ``cfg``."""

    @configurable
    def __init__(self) -> None:
        pass

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return {}


# ----------------------------------------------------------------------------- functions
def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}.")


def quality_focal_loss(
    logits: Tensor, quality: Tensor, beta: float, reduction: str = "none"
) -> Tensor:
    """Quality focal loss (Li et al., "Generalized Focal Loss", NeurIPS 2020, Eq. 5).

    QFL(sigma) = -|y - sigma|^beta ((1 - y) log(1 - sigma) + y log(sigma)): binary
    cross-entropy against a soft target y (the IoU of the prediction with its ground truth
    at the true class, 0 elsewhere), focused by the distance to it.

    Args:
        logits: Tensor[...], raw scores; sigma = sigmoid(logits).
        quality: Tensor[...] in [0, 1], the soft targets y.
        beta: focusing parameter (the paper's best: 2).
        reduction: "none", "mean" or "sum".
    """
    loss = F.binary_cross_entropy_with_logits(logits, quality, reduction="none")
    loss = loss * (quality - logits.sigmoid()).abs().pow(beta)
    return _reduce(loss, reduction)


def varifocal_loss(
    logits: Tensor, quality: Tensor, alpha: float, gamma: float, reduction: str = "none"
) -> Tensor:
    """Varifocal loss (Zhang et al., "VarifocalNet", CVPR 2021, Eq. 2).

    VFL(p, q) = -q (q log p + (1 - q) log(1 - p)) where q > 0 (positives, weighted by their
    IoU target q), and -alpha p^gamma log(1 - p) where q = 0 (negatives, down-weighted
    as in the focal loss; positives are not).

    Args:
        logits: Tensor[...], raw scores; p = sigmoid(logits).
        quality: Tensor[...] in [0, 1], q: the IoU target at the true class, 0 elsewhere.
        alpha, gamma: weight and focusing parameter of the negatives (paper: 0.75, 2).
        reduction: "none", "mean" or "sum".
    """
    probs = logits.sigmoid()
    positive = quality > 0
    weight = (quality * positive) + (~positive) * alpha * probs.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(logits, quality, reduction="none") * weight
    return _reduce(loss, reduction)


# ------------------------------------------------------------------- registered objects
class ClassificationLoss(Protocol):
    needs_prediction_iou: bool

    def __call__(self, logits: Tensor, targets: AnchorTargets) -> Tensor: ...


class BoxLoss(Protocol):
    def __call__(
        self,
        pred_deltas: Tensor,
        gt_boxes: Tensor,
        anchors: Tensor,
        box2box_transform: Box2BoxTransform,
    ) -> Tensor: ...


class LossNormalizer(Protocol):
    def __call__(self, num_foreground: int) -> float: ...


def _valid_logits_and_targets(
    logits: Tensor, targets: AnchorTargets, quality: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The logits of the valid anchors, Tensor[M, K], and their (soft) targets."""
    valid_logits = logits[targets.valid]
    return valid_logits, targets.classification_targets(quality, dtype=valid_logits.dtype)


@RETINANET_EXT_CLS_LOSS_REGISTRY.register()
class SigmoidFocalLoss:
    """Summed sigmoid focal loss over the valid anchors (Detectron2's and the paper's default)."""

    needs_prediction_iou = False

    @configurable
    def __init__(self, *, alpha: float, gamma: float) -> None:
        """
        Args:
            alpha: weight of the positives (1 - alpha for the negatives); negative for none
                (Detectron2's convention).
            gamma: focusing parameter; 0 gives alpha-balanced cross-entropy.
        """
        self.alpha = alpha
        self.gamma = gamma

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return {
            "alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            "gamma": cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
        }

    def __call__(self, logits: Tensor, targets: AnchorTargets) -> Tensor:
        valid_logits, cls_targets = _valid_logits_and_targets(logits, targets)
        return sigmoid_focal_loss(
            valid_logits, cls_targets, alpha=self.alpha, gamma=self.gamma, reduction="sum"
        )


@RETINANET_EXT_CLS_LOSS_REGISTRY.register()
class AlphaBalancedBCELoss(SigmoidFocalLoss):
    """Summed alpha-balanced cross-entropy, the paper's baseline (Sec. 3.1; alpha from
    ``MODEL.RETINANET.FOCAL_LOSS_ALPHA``, the paper's best is 0.75): focal loss with gamma 0."""

    @configurable
    def __init__(self, *, alpha: float) -> None:
        super().__init__(alpha=alpha, gamma=0.0)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return {"alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA}


@RETINANET_EXT_CLS_LOSS_REGISTRY.register()
class BCELoss(SigmoidFocalLoss):
    """Summed plain binary cross-entropy (no balancing; needs the prior initialisation)."""

    @configurable
    def __init__(self) -> None:
        super().__init__(alpha=-1.0, gamma=0.0)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return {}


@RETINANET_EXT_CLS_LOSS_REGISTRY.register()
class QualityFocalLoss:
    """Summed :func:`quality_focal_loss`, soft targets = IoU of each foreground anchor's
    decoded box with its ground truth (``MODEL.RETINANET_EXT.QFL_BETA``)."""

    needs_prediction_iou = True

    @configurable
    def __init__(self, *, beta: float) -> None:
        self.beta = beta

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return {"beta": retinanet_ext_node(cfg).QFL_BETA}

    def __call__(self, logits: Tensor, targets: AnchorTargets) -> Tensor:
        valid_logits, quality = _valid_logits_and_targets(logits, targets, targets.pred_iou)
        return quality_focal_loss(valid_logits, quality, self.beta, reduction="sum")


@RETINANET_EXT_CLS_LOSS_REGISTRY.register()
class VarifocalLoss:
    """Summed :func:`varifocal_loss`, targets = IoU of each foreground anchor's decoded box
    with its ground truth (``MODEL.RETINANET_EXT.VFL_ALPHA``, ``VFL_GAMMA``)."""

    needs_prediction_iou = True

    @configurable
    def __init__(self, *, alpha: float, gamma: float) -> None:
        self.alpha = alpha
        self.gamma = gamma

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        ext = retinanet_ext_node(cfg)
        return {"alpha": ext.VFL_ALPHA, "gamma": ext.VFL_GAMMA}

    def __call__(self, logits: Tensor, targets: AnchorTargets) -> Tensor:
        valid_logits, quality = _valid_logits_and_targets(logits, targets, targets.pred_iou)
        return varifocal_loss(valid_logits, quality, self.alpha, self.gamma, reduction="sum")


@RETINANET_EXT_BOX_LOSS_REGISTRY.register()
class SmoothL1BoxLoss:
    """Summed smooth L1 between predicted and target deltas (beta 0: L1, Detectron2's
    RetinaNet configs)."""

    @configurable
    def __init__(self, *, beta: float) -> None:
        self.beta = beta

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return {"beta": cfg.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA}

    def __call__(
        self,
        pred_deltas: Tensor,
        gt_boxes: Tensor,
        anchors: Tensor,
        box2box_transform: Box2BoxTransform,
    ) -> Tensor:
        target_deltas = box2box_transform.get_deltas(anchors, gt_boxes)
        return smooth_l1_loss(pred_deltas, target_deltas, self.beta, reduction="sum")


class DecodedBoxLoss:
    """Base of box losses on decoded boxes: ``weight * box_loss(decoded, gt)``, summed."""

    box_loss: Callable[..., Tensor]

    @configurable
    def __init__(self, *, weight: float) -> None:
        self.weight = weight

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return {"weight": retinanet_ext_node(cfg).GIOU_LOSS_WEIGHT}

    def __call__(
        self,
        pred_deltas: Tensor,
        gt_boxes: Tensor,
        anchors: Tensor,
        box2box_transform: Box2BoxTransform,
    ) -> Tensor:
        pred_boxes = box2box_transform.apply_deltas(pred_deltas, anchors)
        return self.weight * type(self).box_loss(pred_boxes, gt_boxes, reduction="sum")


@RETINANET_EXT_BOX_LOSS_REGISTRY.register()
class GIoUBoxLoss(DecodedBoxLoss):
    """Generalised IoU loss (Rezatofighi et al., CVPR 2019), weighted by
    ``MODEL.RETINANET_EXT.GIOU_LOSS_WEIGHT``."""

    box_loss = staticmethod(giou_loss)


@RETINANET_EXT_BOX_LOSS_REGISTRY.register()
class DIoUBoxLoss(DecodedBoxLoss):
    """Distance IoU loss (Zheng et al., AAAI 2020), Detectron2's, weighted alike."""

    box_loss = staticmethod(diou_loss)


@RETINANET_EXT_BOX_LOSS_REGISTRY.register()
class CIoUBoxLoss(DecodedBoxLoss):
    """Complete IoU loss (Zheng et al., AAAI 2020), Detectron2's, weighted alike."""

    box_loss = staticmethod(ciou_loss)


@RETINANET_EXT_LOSS_NORMALIZER_REGISTRY.register()
class EMALossNormalizer:
    """Exponential moving average of the foreground count (Detectron2's choice: with one or
    two images per GPU the count varies a lot from step to step)."""

    @configurable
    def __init__(self, *, initial_value: float, momentum: float) -> None:
        self.value = float(initial_value)
        self.momentum = float(momentum)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        ext = retinanet_ext_node(cfg)
        return {
            "initial_value": ext.LOSS_NORMALIZER_EMA_INIT,
            "momentum": ext.LOSS_NORMALIZER_EMA_MOMENTUM,
        }

    def __call__(self, num_foreground: int) -> float:
        """Update the average with ``max(num_foreground, 1)``; returns the new average."""
        self.value = self.value * self.momentum + max(num_foreground, 1) * (1 - self.momentum)
        return self.value


@RETINANET_EXT_LOSS_NORMALIZER_REGISTRY.register()
class ForegroundCountLossNormalizer(_ReadsNoConfig):
    """This batch's number of foreground anchors, at least 1 (paper, Sec. 4.1)."""

    def __call__(self, num_foreground: int) -> float:
        return float(max(num_foreground, 1))


def build_classification_loss(cfg: CfgNode) -> ClassificationLoss:
    """The classification loss named by ``MODEL.RETINANET_EXT.CLS_LOSS_NAME``."""
    name = retinanet_ext_node(cfg).CLS_LOSS_NAME
    loss_class = get_registered(
        RETINANET_EXT_CLS_LOSS_REGISTRY, name, "MODEL.RETINANET_EXT.CLS_LOSS_NAME"
    )
    return loss_class(cfg)


def build_box_loss(cfg: CfgNode) -> BoxLoss:
    """The box loss named by ``MODEL.RETINANET.BBOX_REG_LOSS_TYPE`` ("smooth_l1", "giou",
    "diou", "ciou", or a name in ``RETINANET_EXT_BOX_LOSS_REGISTRY``)."""
    loss_type = cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE
    name = _BOX_LOSS_TYPES.get(loss_type, loss_type)
    loss_class = get_registered(
        RETINANET_EXT_BOX_LOSS_REGISTRY, name, "MODEL.RETINANET.BBOX_REG_LOSS_TYPE"
    )
    return loss_class(cfg)


def build_loss_normalizer(cfg: CfgNode) -> LossNormalizer:
    """The loss normaliser named by ``MODEL.RETINANET_EXT.LOSS_NORMALIZER``."""
    name = retinanet_ext_node(cfg).LOSS_NORMALIZER
    return get_registered(
        RETINANET_EXT_LOSS_NORMALIZER_REGISTRY, name, "MODEL.RETINANET_EXT.LOSS_NORMALIZER"
    )(cfg)
