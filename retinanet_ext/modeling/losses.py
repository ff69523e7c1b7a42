"""RetinaNet's losses: pure functions of tensors, and registries to pick them by config.

* Classification (``MODEL.RETINANET_EXT.CLS_LOSS_NAME``, ``RETINANET_EXT_CLS_LOSS_REGISTRY``):
  sigmoid focal loss (paper, Eq. 5), alpha-balanced and plain binary cross-entropy.
* Box regression (``MODEL.RETINANET.BBOX_REG_LOSS_TYPE``, ``RETINANET_EXT_BOX_LOSS_REGISTRY``):
  smooth L1 on (dx, dy, dw, dh) deltas, GIoU on decoded boxes.
* Normaliser (``MODEL.RETINANET_EXT.LOSS_NORMALIZER``,
  ``RETINANET_EXT_LOSS_NORMALIZER_REGISTRY``): what the summed losses are divided by.

Registered objects are built as ``REGISTRY.get(name)(cfg)`` and called on tensors.
"""

from __future__ import annotations

from typing import Protocol

from retinanet_ext.modeling._cfg import get_registered, retinanet_ext_node

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.utils.registry import Registry
from torch import Tensor

__all__ = [
    "RETINANET_EXT_BOX_LOSS_REGISTRY",
    "RETINANET_EXT_CLS_LOSS_REGISTRY",
    "RETINANET_EXT_LOSS_NORMALIZER_REGISTRY",
    "AlphaBalancedBCELoss",
    "BCELoss",
    "BoxLoss",
    "ClassificationLoss",
    "EMALossNormalizer",
    "ForegroundCountLossNormalizer",
    "GIoUBoxLoss",
    "LossNormalizer",
    "SigmoidFocalLoss",
    "SmoothL1BoxLoss",
    "binary_cross_entropy_loss",
    "build_box_loss",
    "build_classification_loss",
    "build_loss_normalizer",
    "giou_loss",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
]

RETINANET_EXT_CLS_LOSS_REGISTRY = Registry("RETINANET_EXT_CLS_LOSS")
RETINANET_EXT_CLS_LOSS_REGISTRY.__doc__ = """
Classification losses, built as ``obj(cfg)`` and called as
``loss(logits: Tensor[M, K], targets: Tensor[M, K]) -> Tensor[]`` (the sum over all
elements). Chosen by ``MODEL.RETINANET_EXT.CLS_LOSS_NAME``.
"""

RETINANET_EXT_BOX_LOSS_REGISTRY = Registry("RETINANET_EXT_BOX_LOSS")
RETINANET_EXT_BOX_LOSS_REGISTRY.__doc__ = """
Box regression losses, built as ``obj(cfg)`` and called as
``loss(pred_deltas: Tensor[P, 4], gt_boxes: Tensor[P, 4], anchors: Tensor[P, 4],
box2box_transform) -> Tensor[]`` (the sum over the P foreground anchors). Chosen by
``MODEL.RETINANET.BBOX_REG_LOSS_TYPE``: "smooth_l1", "giou" or a registered name.
"""

RETINANET_EXT_LOSS_NORMALIZER_REGISTRY = Registry("RETINANET_EXT_LOSS_NORMALIZER")
RETINANET_EXT_LOSS_NORMALIZER_REGISTRY.__doc__ = """
Loss normalisers, built as ``obj(cfg)`` and called once per training step as
``normalizer(num_foreground: int) -> float``. Chosen by ``MODEL.RETINANET_EXT.LOSS_NORMALIZER``.
"""

# Detectron2's values of MODEL.RETINANET.BBOX_REG_LOSS_TYPE and the classes that implement them.
_BOX_LOSS_TYPES = {"smooth_l1": "SmoothL1BoxLoss", "giou": "GIoUBoxLoss"}


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}.")


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
def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """Focal loss, FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t) (paper, Eq. 5).

    Computed from logits: binary cross-entropy with logits (stable, = -log(p_t)) times the
    modulating factor, so large |logits| neither overflow nor give log(0).

    Args:
        logits: Tensor[...], raw scores; p = sigmoid(logits).
        targets: Tensor[...] of the same shape, 1 for the true class, 0 otherwise.
        alpha: weight of the positives (1 - alpha for the negatives); None for no weighting.
        gamma: focusing parameter; 0 gives alpha-balanced cross-entropy.
        reduction: "none", "mean" or "sum".
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma != 0:
        probs = torch.sigmoid(logits)
        p_t = probs * targets + (1 - probs) * (1 - targets)
        loss = loss * (1 - p_t) ** gamma
    if alpha is not None:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return _reduce(loss, reduction)


def binary_cross_entropy_loss(
    logits: Tensor, targets: Tensor, alpha: float | None = None, reduction: str = "none"
) -> Tensor:
    """Binary cross-entropy with logits, optionally alpha-balanced (paper, Sec. 3.1).

    Args:
        logits, targets: as for :func:`sigmoid_focal_loss`.
        alpha: weight of the positives (1 - alpha for the negatives); None for plain BCE.
        reduction: "none", "mean" or "sum".
    """
    return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=0.0, reduction=reduction)


def smooth_l1_loss(
    input: Tensor, target: Tensor, beta: float, reduction: str = "none"
) -> Tensor:
    """Smooth L1 (Huber divided by beta): 0.5 x^2 / beta if |x| < beta else |x| - 0.5 beta.

    ``beta`` = 0 (or below 1e-5, where 1 / beta is unstable) is the L1 loss.

    Args:
        input, target: Tensor[...] of the same shape, e.g. box deltas Tensor[P, 4].
        beta: the transition point between the quadratic and the linear part.
        reduction: "none", "mean" or "sum".
    """
    diff = torch.abs(input - target)
    if beta < 1e-5:
        loss = diff
    else:
        loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return _reduce(loss, reduction)


def giou_loss(
    boxes: Tensor, target_boxes: Tensor, eps: float = 1e-7, reduction: str = "none"
) -> Tensor:
    """1 - generalised IoU (Rezatofighi et al., CVPR 2019) of paired boxes.

    GIoU = IoU - (area(C) - area(union)) / area(C), C the smallest box enclosing both.

    Args:
        boxes, target_boxes: Tensor[P, 4], absolute XYXY; row i of one pairs with row i
            of the other.
        eps: added to union and enclosing areas against division by zero.
        reduction: "none", "mean" or "sum".

    Returns:
        Tensor[P] in [0, 2] (reduced as asked).
    """
    x1, y1, x2, y2 = boxes.unbind(dim=-1)
    tx1, ty1, tx2, ty2 = target_boxes.unbind(dim=-1)
    inter_w = (torch.min(x2, tx2) - torch.max(x1, tx1)).clamp(min=0)
    inter_h = (torch.min(y2, ty2) - torch.max(y1, ty1)).clamp(min=0)
    intersection = inter_w * inter_h
    union = (x2 - x1) * (y2 - y1) + (tx2 - tx1) * (ty2 - ty1) - intersection
    iou = intersection / (union + eps)
    enclosing_w = torch.max(x2, tx2) - torch.min(x1, tx1)
    enclosing_h = torch.max(y2, ty2) - torch.min(y1, ty1)
    enclosing = enclosing_w * enclosing_h
    giou = iou - (enclosing - union) / (enclosing + eps)
    return _reduce(1 - giou, reduction)


# ------------------------------------------------------------------- registered objects
class ClassificationLoss(Protocol):
    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor: ...


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


@RETINANET_EXT_CLS_LOSS_REGISTRY.register()
class SigmoidFocalLoss:
    """Summed :func:`sigmoid_focal_loss` (Detectron2's and the paper's default)."""

    @configurable
    def __init__(self, *, alpha: float | None = 0.25, gamma: float = 2.0) -> None:
        self.alpha = alpha
        self.gamma = gamma

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        alpha = cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA
        return {
            # Detectron2 convention: a negative alpha disables the weighting.
            "alpha": alpha if alpha >= 0 else None,
            "gamma": cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
        }

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        return sigmoid_focal_loss(logits, targets, self.alpha, self.gamma, reduction="sum")


@RETINANET_EXT_CLS_LOSS_REGISTRY.register()
class AlphaBalancedBCELoss:
    """Summed alpha-balanced cross-entropy, the paper's baseline (alpha from
    ``MODEL.RETINANET.FOCAL_LOSS_ALPHA``; the paper's best is 0.75)."""

    @configurable
    def __init__(self, *, alpha: float = 0.25) -> None:
        self.alpha = alpha

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return {"alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA}

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        return binary_cross_entropy_loss(logits, targets, alpha=self.alpha, reduction="sum")


@RETINANET_EXT_CLS_LOSS_REGISTRY.register()
class BCELoss(_ReadsNoConfig):
    """Summed plain binary cross-entropy (no balancing; needs the prior initialisation)."""

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        return binary_cross_entropy_loss(logits, targets, alpha=None, reduction="sum")


@RETINANET_EXT_BOX_LOSS_REGISTRY.register()
class SmoothL1BoxLoss:
    """Summed :func:`smooth_l1_loss` between predicted and target deltas."""

    @configurable
    def __init__(self, *, beta: float = 0.0) -> None:
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


@RETINANET_EXT_BOX_LOSS_REGISTRY.register()
class GIoUBoxLoss:
    """Summed :func:`giou_loss` between decoded predictions and ground truth, times a weight."""

    @configurable
    def __init__(self, *, weight: float = 1.0) -> None:
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
        return self.weight * giou_loss(pred_boxes, gt_boxes, reduction="sum")


@RETINANET_EXT_LOSS_NORMALIZER_REGISTRY.register()
class EMALossNormalizer:
    """Exponential moving average of the foreground count (Detectron2's choice: with one or
    two images per GPU the count varies a lot from step to step)."""

    @configurable
    def __init__(self, *, initial_value: float = 100.0, momentum: float = 0.9) -> None:
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
    or a name in ``RETINANET_EXT_BOX_LOSS_REGISTRY``)."""
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
