"""Loss functions (hand-worked values, fvcore agreement), normalisers and their registries."""

from __future__ import annotations

import math

from retinanet_ext.modeling.losses import (
    AlphaBalancedBCELoss,
    BCELoss,
    EMALossNormalizer,
    ForegroundCountLossNormalizer,
    GIoUBoxLoss,
    SigmoidFocalLoss,
    SmoothL1BoxLoss,
    binary_cross_entropy_loss,
    build_box_loss,
    build_classification_loss,
    build_loss_normalizer,
    giou_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
)

import pytest
import torch
import torch.nn.functional as F
from _modeling_helpers import retinanet_cfg
from detectron2.modeling.box_regression import Box2BoxTransform
from fvcore.nn import giou_loss as fvcore_giou_loss
from fvcore.nn import sigmoid_focal_loss as fvcore_sigmoid_focal_loss
from fvcore.nn import smooth_l1_loss as fvcore_smooth_l1_loss


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
    assert loss.item() == pytest.approx(0.25 * (1 - p_t) ** 2 * -math.log(p_t), rel=1e-12)


def test_focal_loss_negative_uses_one_minus_alpha() -> None:
    # y = 0 with p = 0.9: p_t = 0.1, alpha_t = 0.75.
    logits = torch.tensor([_logit(0.9)], dtype=torch.float64)
    loss = sigmoid_focal_loss(logits, torch.zeros(1, dtype=torch.float64), alpha=0.25, gamma=2.0)
    assert loss.item() == pytest.approx(0.75 * 0.81 * -math.log(0.1), rel=1e-12)  # 1.3988


def test_gamma_zero_is_alpha_balanced_cross_entropy() -> None:
    logits = torch.tensor([_logit(0.3), _logit(0.8)], dtype=torch.float64)
    targets = torch.tensor([1.0, 0.0], dtype=torch.float64)
    # -alpha log(p) for the positive, -(1 - alpha) log(1 - p) for the negative.
    expected = [-0.25 * math.log(0.3), -0.75 * math.log(0.2)]
    focal = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=0.0)
    bce = binary_cross_entropy_loss(logits, targets, alpha=0.25)
    assert focal.tolist() == pytest.approx(expected, rel=1e-12)
    assert bce.tolist() == pytest.approx(expected, rel=1e-12)
    plain = binary_cross_entropy_loss(logits, targets, alpha=None)
    assert plain.tolist() == pytest.approx([-math.log(0.3), -math.log(0.2)], rel=1e-12)


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.75, 0.0), (0.5, 1.5)])
def test_focal_loss_matches_fvcore_values_and_gradients(alpha: float, gamma: float) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(300, 7, generator=generator) * 4).requires_grad_()
    targets = (torch.rand(300, 7, generator=generator) < 0.2).float()
    ours = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="sum")
    (ours_grad,) = torch.autograd.grad(ours, logits)
    theirs = fvcore_sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="sum")
    (theirs_grad,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-5, atol=1e-8)


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
    for beta in (0.0, 0.1, 1.0):
        torch.testing.assert_close(
            smooth_l1_loss(prediction, target, beta, reduction="sum"),
            fvcore_smooth_l1_loss(prediction, target, beta, reduction="sum"),
        )


def test_giou_worked_values() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    targets = torch.tensor([[0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 3.0, 3.0]])
    loss = giou_loss(boxes, targets)
    # Identical: 0. Disjoint: IoU 0, hull 3, union 2 -> GIoU -1/3. Overlap: IoU 1/7,
    # hull 9, union 7 -> GIoU 1/7 - 2/9 = -5/63.
    assert loss.tolist() == pytest.approx([0.0, 4 / 3, 68 / 63], rel=1e-5, abs=1e-6)
    torch.testing.assert_close(
        giou_loss(boxes, targets, reduction="sum"),
        fvcore_giou_loss(boxes, targets, reduction="sum"),
    )


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
    giou_once = GIoUBoxLoss(weight=1.0)(off, gt_boxes, anchors, transform)
    giou_twice = GIoUBoxLoss(weight=2.0)(off, gt_boxes, anchors, transform)
    assert giou_once.item() > 0
    torch.testing.assert_close(giou_twice, 2 * giou_once)


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
    logits, targets = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    assert balanced(logits, targets).item() == pytest.approx(math.log(2), rel=1e-6)  # .75 + .25


def test_unknown_loss_name_lists_the_registered_ones() -> None:
    cfg = retinanet_cfg(ours=True)
    cfg.MODEL.RETINANET_EXT.CLS_LOSS_NAME = "NoSuchLoss"
    with pytest.raises(KeyError, match="SigmoidFocalLoss"):
        build_classification_loss(cfg)
    cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "diou"
    with pytest.raises(KeyError, match="GIoUBoxLoss"):
        build_box_loss(cfg)


def test_plain_bce_matches_torch() -> None:
    logits = torch.tensor([[-1.0, 2.0], [0.5, -3.0]])
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    torch.testing.assert_close(
        BCELoss()(logits, targets),
        F.binary_cross_entropy(torch.sigmoid(logits), targets, reduction="sum"),
    )
