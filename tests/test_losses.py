"""Loss functions (hand-worked values), normalisers and their registries."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _modeling_helpers import retinanet_cfg
from detectron2.modeling.box_regression import Box2BoxTransform

from retinanet_ext.modeling.losses import (
    AlphaBalancedBCELoss,
    BCELoss,
    CIoUBoxLoss,
    DIoUBoxLoss,
    EMALossNormalizer,
    ForegroundCountLossNormalizer,
    GIoUBoxLoss,
    QualityFocalLoss,
    SigmoidFocalLoss,
    SmoothL1BoxLoss,
    VarifocalLoss,
    build_box_loss,
    build_classification_loss,
    build_loss_normalizer,
    giou_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
    varifocal_loss,
)
from retinanet_ext.modeling.matching import AnchorTargets


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.mark.parametrize(
    ("p_t", "expected"),
    [(0.1, 0.466), (0.9, 0.000263)],  # spec: -0.466 and -0.000263 as log-likelihood terms
)
def test_focal_loss_worked_values_for_a_positive(p_t: float, expected: float) -> None:
    logits = torch.tensor([_logit(p_t)], dtype=torch.float64)  # y = 1, so p_t = p
    loss = sigmoid_focal_loss(logits, torch.ones(1, dtype=torch.float64), alpha=0.25, gamma=2.0)
    assert loss.item() == pytest.approx(expected, rel=2e-3)
    # fvcore's focal loss computes in float32
    assert loss.item() == pytest.approx(0.25 * (1 - p_t) ** 2 * -math.log(p_t), rel=1e-6)


def test_focal_loss_negative_uses_one_minus_alpha() -> None:
    # y = 0 with p = 0.9: p_t = 0.1, alpha_t = 0.75.
    logits = torch.tensor([_logit(0.9)], dtype=torch.float64)
    loss = sigmoid_focal_loss(logits, torch.zeros(1, dtype=torch.float64), alpha=0.25, gamma=2.0)
    assert loss.item() == pytest.approx(0.75 * 0.81 * -math.log(0.1), rel=1e-6)  # 1.3988


def test_gamma_zero_is_alpha_balanced_cross_entropy() -> None:
    logits = torch.tensor([_logit(0.3), _logit(0.8)], dtype=torch.float64)
    targets = torch.tensor([1.0, 0.0], dtype=torch.float64)
    # -alpha log(p) for the positive, -(1 - alpha) log(1 - p) for the negative.
    expected = [-0.25 * math.log(0.3), -0.75 * math.log(0.2)]
    focal = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=0.0)
    assert focal.tolist() == pytest.approx(expected, rel=1e-6)
    plain = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0.0)  # negative: no alpha
    assert plain.tolist() == pytest.approx([-math.log(0.3), -math.log(0.2)], rel=1e-6)


def test_focal_loss_is_finite_for_extreme_logits() -> None:
    logits = torch.tensor([200.0, -200.0, 200.0, -200.0], requires_grad=True)
    targets = torch.tensor([1.0, 1.0, 0.0, 0.0])
    loss = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    # Confidently wrong costs alpha_t * 1 * |logit|; confidently right costs ~0.
    assert loss.tolist() == pytest.approx([0.0, 0.25 * 200, 0.75 * 200, 0.0], abs=1e-6)
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_smooth_l1_worked_values() -> None:
    prediction = torch.tensor([0.2, 1.0, -3.0])
    target = torch.zeros(3)
    # beta 0.5: 0.5 * 0.04 / 0.5 = 0.04 below beta; |x| - 0.25 above.
    loss = smooth_l1_loss(prediction, target, beta=0.5)
    assert loss.tolist() == pytest.approx([0.04, 0.75, 2.75], rel=1e-6)
    assert smooth_l1_loss(prediction, target, beta=0.0).tolist() == pytest.approx([0.2, 1.0, 3.0])


def test_giou_worked_values() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    targets = torch.tensor([[0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 3.0, 3.0]])
    loss = giou_loss(boxes, targets)
    # Identical: 0. Disjoint: IoU 0, hull 3, union 2 -> GIoU -1/3. Overlap: IoU 1/7,
    # hull 9, union 7 -> GIoU 1/7 - 2/9 = -5/63.
    assert loss.tolist() == pytest.approx([0.0, 4 / 3, 68 / 63], rel=1e-5, abs=1e-6)


def test_box_losses_encode_and_decode_with_the_box_transform() -> None:
    transform = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 10.0, 30.0, 50.0]])
    gt_boxes = torch.tensor([[1.0, 1.0, 11.0, 11.0], [12.0, 8.0, 30.0, 52.0]])
    exact = transform.get_deltas(anchors, gt_boxes)
    assert SmoothL1BoxLoss(beta=0.0)(exact, gt_boxes, anchors, transform).item() == pytest.approx(
        0.0, abs=1e-6
    )
    assert GIoUBoxLoss(weight=2.0)(exact, gt_boxes, anchors, transform).item() == pytest.approx(
        0.0, abs=1e-5
    )
    off = exact + torch.tensor([[0.1, 0.0, 0.0, 0.0], [0.0, -0.2, 0.0, 0.0]])
    assert SmoothL1BoxLoss(beta=0.0)(off, gt_boxes, anchors, transform).item() == pytest.approx(
        0.3, rel=1e-5
    )
    for loss_class in (GIoUBoxLoss, DIoUBoxLoss, CIoUBoxLoss):
        exact_loss = loss_class(weight=1.0)(exact, gt_boxes, anchors, transform)
        assert exact_loss.item() == pytest.approx(0.0, abs=1e-5), loss_class
        once = loss_class(weight=1.0)(off, gt_boxes, anchors, transform)
        twice = loss_class(weight=2.0)(off, gt_boxes, anchors, transform)
        assert once.item() > 0
        torch.testing.assert_close(twice, 2 * once)


def test_ema_and_per_batch_normalisers() -> None:
    ema = EMALossNormalizer(initial_value=100.0, momentum=0.9)
    # 0.9 * 100 + 0.1 * 10 = 91; zero foreground counts as 1: 0.9 * 91 + 0.1 = 82.0.
    assert [ema(10), ema(0), ema(50)] == pytest.approx([91.0, 82.0, 78.8])
    per_batch = ForegroundCountLossNormalizer()
    assert [per_batch(10), per_batch(0), per_batch(50)] == [10.0, 1.0, 50.0]


def test_default_config_builds_detectron2_equivalent_losses() -> None:
    cfg = retinanet_cfg(ours=True)
    cls_loss = build_classification_loss(cfg)
    assert isinstance(cls_loss, SigmoidFocalLoss)
    assert (cls_loss.alpha, cls_loss.gamma) == (0.25, 2.0)
    box_loss = build_box_loss(cfg)
    assert isinstance(box_loss, SmoothL1BoxLoss) and box_loss.beta == 0.0  # Base-RetinaNet.yaml
    normalizer = build_loss_normalizer(cfg)
    assert isinstance(normalizer, EMALossNormalizer)
    assert (normalizer.value, normalizer.momentum) == (100.0, 0.9)


def test_losses_are_swapped_from_config() -> None:
    cfg = retinanet_cfg(ours=True)
    cfg.MODEL.RETINANET_EXT.CLS_LOSS_NAME = "BCELoss"
    cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "giou"
    cfg.MODEL.RETINANET_EXT.GIOU_LOSS_WEIGHT = 2.5
    cfg.MODEL.RETINANET_EXT.LOSS_NORMALIZER = "ForegroundCountLossNormalizer"
    assert isinstance(build_classification_loss(cfg), BCELoss)
    box_loss = build_box_loss(cfg)
    assert isinstance(box_loss, GIoUBoxLoss) and box_loss.weight == 2.5
    assert isinstance(build_loss_normalizer(cfg), ForegroundCountLossNormalizer)

    cfg.MODEL.RETINANET_EXT.CLS_LOSS_NAME = "AlphaBalancedBCELoss"
    cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.75
    balanced = build_classification_loss(cfg)
    assert isinstance(balanced, AlphaBalancedBCELoss) and balanced.alpha == 0.75
    logits = torch.zeros(1, 1, 2)
    # One anchor of class 0: .75 ln 2 for the positive, .25 ln 2 for the negative.
    assert balanced(logits, _targets([[0]], 2)).item() == pytest.approx(math.log(2), rel=1e-6)

    cfg.MODEL.RETINANET_EXT.CLS_LOSS_NAME = "QualityFocalLoss"
    cfg.MODEL.RETINANET_EXT.QFL_BETA = 1.5
    qfl = build_classification_loss(cfg)
    assert isinstance(qfl, QualityFocalLoss) and qfl.beta == 1.5 and qfl.needs_prediction_iou
    cfg.MODEL.RETINANET_EXT.CLS_LOSS_NAME = "VarifocalLoss"
    cfg.MODEL.RETINANET_EXT.VFL_ALPHA, cfg.MODEL.RETINANET_EXT.VFL_GAMMA = 0.5, 1.0
    vfl = build_classification_loss(cfg)
    assert isinstance(vfl, VarifocalLoss) and (vfl.alpha, vfl.gamma) == (0.5, 1.0)
    for loss_type, loss_class in (("diou", DIoUBoxLoss), ("ciou", CIoUBoxLoss)):
        cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = loss_type
        assert isinstance(build_box_loss(cfg), loss_class)


def test_unknown_loss_name_lists_the_registered_ones() -> None:
    cfg = retinanet_cfg(ours=True)
    cfg.MODEL.RETINANET_EXT.CLS_LOSS_NAME = "NoSuchLoss"
    with pytest.raises(KeyError, match="SigmoidFocalLoss"):
        build_classification_loss(cfg)
    cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "iou"
    with pytest.raises(KeyError, match="GIoUBoxLoss"):
        build_box_loss(cfg)


def _targets(labels: list[list[int]], num_classes: int, pred_iou=None) -> AnchorTargets:
    labels_tensor = torch.tensor(labels)
    return AnchorTargets(
        labels=labels_tensor,
        matched_boxes=torch.zeros(*labels_tensor.shape, 4),
        anchor_iou=torch.zeros(labels_tensor.shape),
        num_classes=num_classes,
        pred_iou=None if pred_iou is None else torch.tensor(pred_iou),
    )


def test_plain_bce_matches_torch_on_the_valid_anchors() -> None:
    logits = torch.tensor([[[-1.0, 2.0], [0.5, -3.0], [9.0, 9.0]]])
    targets = _targets([[1, 0, -1]], 2)  # the third anchor is ignored
    one_hot = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    torch.testing.assert_close(
        BCELoss()(logits, targets),
        F.binary_cross_entropy(torch.sigmoid(logits[0, :2]), one_hot, reduction="sum"),
    )


def test_quality_focal_loss_worked_values() -> None:
    # sigma = 0.8, y = 0.6: BCE = -(0.6 ln 0.8 + 0.4 ln 0.2), times |0.6 - 0.8|^2.
    logits = torch.tensor([_logit(0.8), _logit(0.3)], dtype=torch.float64)
    quality = torch.tensor([0.6, 0.0], dtype=torch.float64)
    loss = quality_focal_loss(logits, quality, beta=2.0)
    expected = [
        -(0.6 * math.log(0.8) + 0.4 * math.log(0.2)) * 0.2**2,
        -math.log(0.7) * 0.3**2,  # a negative: sigma^beta * -log(1 - sigma)
    ]
    assert loss.tolist() == pytest.approx(expected, rel=1e-12)


def test_varifocal_loss_worked_values() -> None:
    # Positive (q = 0.6, p = 0.8): q * BCE(p, q). Negative (p = 0.3): alpha p^gamma -log(1-p).
    logits = torch.tensor([_logit(0.8), _logit(0.3)], dtype=torch.float64)
    quality = torch.tensor([0.6, 0.0], dtype=torch.float64)
    loss = varifocal_loss(logits, quality, alpha=0.75, gamma=2.0)
    expected = [
        0.6 * -(0.6 * math.log(0.8) + 0.4 * math.log(0.2)),
        0.75 * 0.3**2 * -math.log(0.7),
    ]
    assert loss.tolist() == pytest.approx(expected, rel=1e-12)


def test_iou_aware_losses_read_the_prediction_iou_at_the_true_class() -> None:
    logits = torch.zeros(1, 2, 2)
    targets = _targets([[1, 2]], 2, pred_iou=[[0.8, 0.0]])  # anchor 0 is class 1, IoU 0.8
    soft = torch.tensor([[0.0, 0.8], [0.0, 0.0]])
    torch.testing.assert_close(
        QualityFocalLoss(beta=2.0)(logits, targets),
        quality_focal_loss(logits[0], soft, beta=2.0, reduction="sum"),
    )
    torch.testing.assert_close(
        VarifocalLoss(alpha=0.75, gamma=2.0)(logits, targets),
        varifocal_loss(logits[0], soft, alpha=0.75, gamma=2.0, reduction="sum"),
    )
