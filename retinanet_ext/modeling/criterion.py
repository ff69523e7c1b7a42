"""The training criterion: anchors + predictions + ground truth -> losses.

Owned by the meta-architecture (as DETR's ``SetCriterion``), so the head stays forward-only:
the assigner labels every anchor (:class:`~.matching.AnchorTargets`), the classification
loss reads those targets, the box loss covers the foreground anchors, and both are divided by
the loss normaliser (paper, Sec. 4.1). Every part is a registered component chosen in the
config.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils.events import get_event_storage
from torch import Tensor

from retinanet_ext.modeling.losses import (
    BoxLoss,
    ClassificationLoss,
    LossNormalizer,
    build_box_loss,
    build_classification_loss,
    build_loss_normalizer,
)
from retinanet_ext.modeling.matching import AnchorTargets, build_assigner

__all__ = ["RetinaNetCriterion", "prediction_iou"]


def _put_scalar_if_logging(name: str, value: float) -> None:
    """Log to Detectron2's EventStorage when one is active (in its trainer), else skip."""
    try:
        storage = get_event_storage()
    except (AssertionError, IndexError):
        return
    storage.put_scalar(name, value)


@torch.no_grad()
def prediction_iou(
    pred_deltas: Tensor,
    anchors: Tensor,
    targets: AnchorTargets,
    box2box_transform: Box2BoxTransform,
) -> Tensor:
    """IoU of each foreground anchor's decoded box with its ground truth.

    Args:
        pred_deltas: Tensor[N, R, 4].
        anchors: Tensor[R, 4], XYXY pixels.
        targets: the assignment (foreground anchors and their matched boxes).
        box2box_transform: decodes the deltas.

    Returns:
        Tensor[N, R], 0 on anchors that are not foreground.
    """
    foreground = targets.foreground
    pred_boxes = box2box_transform.apply_deltas(
        pred_deltas[foreground].float(), anchors.expand_as(pred_deltas)[foreground]
    )
    gt_boxes = targets.matched_boxes[foreground]
    iou = torch.zeros(targets.labels.shape, device=pred_deltas.device)
    iou[foreground] = matched_pairwise_iou(Boxes(pred_boxes), Boxes(gt_boxes))
    return iou


class RetinaNetCriterion:
    """Assignment, losses and normalisation of one training step."""

    @configurable
    def __init__(
        self,
        *,
        assigner,
        cls_loss: ClassificationLoss,
        box_loss: BoxLoss,
        loss_normalizer: LossNormalizer,
        box2box_transform: Box2BoxTransform,
        num_classes: int,
    ) -> None:
        """
        Args:
            assigner: ``assigner(anchors, gt_instances, num_classes) -> AnchorTargets``
                (see :data:`~.matching.RETINANET_EXT_ASSIGNER_REGISTRY`).
            cls_loss: ``cls_loss(logits[N, R, K], targets) -> Tensor[]``, summed.
            box_loss: ``box_loss(deltas[P, 4], gt_boxes[P, 4], anchors[P, 4], coder)``, summed.
            loss_normalizer: ``normalizer(num_foreground) -> float``; divides both losses.
            box2box_transform: the box coding of the head's deltas.
            num_classes: K.
        """
        self.assigner = assigner
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.loss_normalizer = loss_normalizer
        self.box2box_transform = box2box_transform
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg: CfgNode, box2box_transform: Box2BoxTransform) -> dict:
        return {
            "assigner": build_assigner(cfg),
            "cls_loss": build_classification_loss(cfg),
            "box_loss": build_box_loss(cfg),
            "loss_normalizer": build_loss_normalizer(cfg),
            "box2box_transform": box2box_transform,
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
        }

    def __call__(
        self,
        anchors: Sequence[Boxes],
        pred_logits: Tensor,
        pred_deltas: Tensor,
        gt_instances: Sequence[Instances],
    ) -> dict[str, Tensor]:
        """
        Args:
            anchors: per level, Boxes[R_i] (the anchor generator's output).
            pred_logits: Tensor[N, R, K], levels concatenated
                (see :func:`~.head.flatten_dense_predictions`).
            pred_deltas: Tensor[N, R, 4].
            gt_instances: per image, Instances with ``gt_boxes`` and ``gt_classes``.

        Returns:
            ``{"loss_cls": Tensor[], "loss_box_reg": Tensor[]}``.
        """
        targets = self.assigner(anchors, gt_instances, self.num_classes)
        all_anchors = Boxes.cat(list(anchors)).tensor
        foreground = targets.foreground
        num_foreground = int(foreground.sum().item())
        _put_scalar_if_logging("num_pos_anchors", num_foreground / len(gt_instances))
        normalizer = self.loss_normalizer(num_foreground)

        if getattr(self.cls_loss, "needs_prediction_iou", False):
            targets.pred_iou = prediction_iou(
                pred_deltas, all_anchors, targets, self.box2box_transform
            )
        loss_cls = self.cls_loss(pred_logits, targets)
        loss_box_reg = self.box_loss(
            pred_deltas[foreground],
            targets.matched_boxes[foreground],
            all_anchors.expand_as(pred_deltas)[foreground],
            self.box2box_transform,
        )
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}
