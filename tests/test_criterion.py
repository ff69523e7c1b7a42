"""The criterion and its targets: losses assembled by hand on tiny cases."""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes

from retinanet_ext.modeling.criterion import RetinaNetCriterion, prediction_iou
from retinanet_ext.modeling.losses import (
    BCELoss,
    EMALossNormalizer,
    ForegroundCountLossNormalizer,
    QualityFocalLoss,
    SigmoidFocalLoss,
    SmoothL1BoxLoss,
)
from retinanet_ext.modeling.matching import AnchorTargets

TRANSFORM = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
ANCHORS = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 9.0, 9.0]])


class _FixedAssigner:
    """Returns the given labels; matched boxes are the anchors themselves."""

    def __init__(self, labels: list[list[int]]) -> None:
        self.labels = torch.tensor(labels)

    def __call__(self, anchors, gt_instances, num_classes) -> AnchorTargets:
        anchors = Boxes.cat(list(anchors)).tensor
        n = len(self.labels)
        return AnchorTargets(
            labels=self.labels,
            matched_boxes=anchors[None].expand(n, -1, -1).clone(),
            anchor_iou=torch.ones(self.labels.shape),
            num_classes=num_classes,
        )


def _criterion(labels, cls_loss, normalizer=None) -> RetinaNetCriterion:
    return RetinaNetCriterion(
        assigner=_FixedAssigner(labels),
        cls_loss=cls_loss,
        box_loss=SmoothL1BoxLoss(beta=0.0),
        loss_normalizer=normalizer or ForegroundCountLossNormalizer(),
        box2box_transform=TRANSFORM,
        num_classes=2,
    )


def _predictions():
    """Three anchors, two classes; the ignored anchor's logits are confidently wrong."""
    logits = torch.zeros(1, 3, 2)
    logits[0, 2] = 50.0
    deltas = torch.zeros(1, 3, 4)
    deltas[0, 0] = torch.tensor([0.1, -0.2, 0.0, 0.0])
    return logits, deltas


def test_targets_masks_and_one_hot() -> None:
    targets = _FixedAssigner([[0, 2, -1]])([Boxes(ANCHORS)], [None], 2)
    assert targets.valid.tolist() == [[True, True, False]]
    assert targets.foreground.tolist() == [[True, False, False]]
    assert targets.classification_targets().tolist() == [[1.0, 0.0], [0.0, 0.0]]
    quality = torch.tensor([[0.7, 0.9, 0.3]])
    torch.testing.assert_close(
        targets.classification_targets(quality), torch.tensor([[0.7, 0.0], [0.0, 0.0]])
    )


def test_losses_by_hand_focal_l1_per_batch_normaliser() -> None:
    criterion = _criterion([[0, 2, -1]], SigmoidFocalLoss(alpha=0.25, gamma=2.0))
    losses = criterion([Boxes(ANCHORS)], *_predictions(), [None])
    # Logits 0: p = 0.5, (1 - p_t)^2 = 0.25, -log p_t = ln 2. One positive element
    # (alpha 0.25) and three negatives (0.75); one foreground anchor.
    assert losses["loss_cls"].item() == pytest.approx((0.25 + 3 * 0.75) * 0.25 * math.log(2))
    # Target deltas of the foreground anchor are 0 (gt = anchor): L1 = 0.1 + 0.2.
    assert losses["loss_box_reg"].item() == pytest.approx(0.3, rel=1e-6)


def test_losses_with_bce_and_ema_normaliser() -> None:
    criterion = _criterion(
        [[0, 2, -1]], BCELoss(), EMALossNormalizer(initial_value=100.0, momentum=0.9)
    )
    first = criterion([Boxes(ANCHORS)], *_predictions(), [None])
    second = criterion([Boxes(ANCHORS)], *_predictions(), [None])
    # Four valid elements of ln 2 each; EMA: 0.9 * 100 + 0.1 * 1 = 90.1, then 81.19.
    assert first["loss_cls"].item() == pytest.approx(4 * math.log(2) / 90.1, rel=1e-6)
    assert second["loss_cls"].item() == pytest.approx(4 * math.log(2) / 81.19, rel=1e-6)


def test_image_without_foreground_has_zero_box_loss() -> None:
    criterion = _criterion([[2, 2, 2]], SigmoidFocalLoss(alpha=0.25, gamma=2.0))
    logits, deltas = _predictions()
    logits.requires_grad_()
    deltas.requires_grad_()
    losses = criterion([Boxes(ANCHORS)], logits, deltas, [None])
    assert losses["loss_box_reg"].item() == 0.0
    assert losses["loss_cls"].item() > 0
    sum(losses.values()).backward()
    assert torch.isfinite(logits.grad).all() and not deltas.grad.any()


def test_prediction_iou_of_decoded_boxes() -> None:
    targets = _FixedAssigner([[0, 1, 2]])([Boxes(ANCHORS)], [None], 2)
    deltas = torch.zeros(1, 3, 4)
    deltas[0, 1, 2:] = math.log(0.5)  # anchor 1 decoded at half its width and height
    iou = prediction_iou(deltas, ANCHORS, targets, TRANSFORM)
    # anchor 0: its own box (IoU 1); anchor 1: a 10x10 box centred in the 20x20 one (1/4);
    # anchor 2 is background: 0.
    torch.testing.assert_close(iou, torch.tensor([[1.0, 0.25, 0.0]]))


def test_iou_aware_loss_gets_the_prediction_iou() -> None:
    criterion = _criterion([[0, 1, 2]], QualityFocalLoss(beta=2.0))
    logits = torch.zeros(1, 3, 2)
    deltas = torch.zeros(1, 3, 4)
    deltas[0, 1, 2:] = math.log(0.5)
    losses = criterion([Boxes(ANCHORS)], logits, deltas, [None])
    # sigma = 0.5 everywhere; soft targets: anchor 0 class 0 -> 1, anchor 1 class 1 -> 0.25,
    # the rest 0. QFL = BCE(0.5, y) * |y - 0.5|^2 summed, / 2 foreground anchors.
    def qfl(y: float) -> float:
        bce = -(y * math.log(0.5) + (1 - y) * math.log(0.5))
        return bce * (y - 0.5) ** 2

    expected = (qfl(1.0) + qfl(0.25) + 4 * qfl(0.0)) / 2
    assert losses["loss_cls"].item() == pytest.approx(expected, rel=1e-6)
