"""Anchor assignment: IoU thresholds, ignored band, low-quality matches, empty images; ATSS."""

from __future__ import annotations

import pytest
import torch
from _modeling_helpers import make_instances, retinanet_cfg
from detectron2.structures import Boxes

from retinanet_ext.modeling.matching import (
    IGNORE_LABEL,
    ATSSAssigner,
    atss_assign,
    build_anchor_matcher,
    build_assigner,
    label_anchors,
)

NUM_CLASSES = 5
GT_BOX = [0.0, 0.0, 100.0, 100.0]


def _anchors_with_ious(ious: list[float]) -> torch.Tensor:
    """Anchors nested in GT_BOX with IoU exactly ``iou``: [0, 0, 100, 100 * iou]."""
    return torch.tensor([[0.0, 0.0, 100.0, 100.0 * iou] for iou in ious])


def test_thresholds_at_039_040_049_050() -> None:
    cfg = retinanet_cfg(ours=True)
    cfg.MODEL.RETINANET_EXT.ALLOW_LOW_QUALITY_MATCHES = False
    matcher = build_anchor_matcher(cfg)
    anchors = _anchors_with_ious([0.39, 0.4, 0.49, 0.5])
    gt = make_instances((100, 100), [GT_BOX], [3])
    targets = label_anchors(anchors, [gt], matcher, NUM_CLASSES)
    labels, boxes = targets.labels, targets.matched_boxes
    # < 0.4 background (label K), [0.4, 0.5) ignored, >= 0.5 the ground truth's class.
    assert labels.tolist() == [[NUM_CLASSES, IGNORE_LABEL, IGNORE_LABEL, 3]]
    assert labels.dtype == torch.int64
    torch.testing.assert_close(boxes[0, 3], torch.tensor(GT_BOX))
    torch.testing.assert_close(targets.anchor_iou, torch.tensor([[0.39, 0.4, 0.49, 0.5]]))


def test_low_quality_match_is_a_config_switch() -> None:
    anchors = _anchors_with_ious([0.2, 0.45])  # best anchor of the box is below 0.5
    gt = make_instances((100, 100), [GT_BOX], [1])
    cfg = retinanet_cfg(ours=True)
    assert cfg.MODEL.RETINANET_EXT.ALLOW_LOW_QUALITY_MATCHES  # Detectron2's behaviour
    labels = label_anchors(anchors, [gt], build_anchor_matcher(cfg), NUM_CLASSES).labels
    assert labels.tolist() == [[NUM_CLASSES, 1]]
    cfg.MODEL.RETINANET_EXT.ALLOW_LOW_QUALITY_MATCHES = False
    labels = label_anchors(anchors, [gt], build_anchor_matcher(cfg), NUM_CLASSES).labels
    assert labels.tolist() == [[NUM_CLASSES, IGNORE_LABEL]]


def test_thresholds_and_labels_come_from_the_config() -> None:
    cfg = retinanet_cfg(ours=True)
    cfg.MODEL.RETINANET.IOU_THRESHOLDS = [0.3, 0.6]
    cfg.MODEL.RETINANET.IOU_LABELS = [0, -1, 1]
    cfg.MODEL.RETINANET_EXT.ALLOW_LOW_QUALITY_MATCHES = False
    anchors = _anchors_with_ious([0.29, 0.3, 0.59, 0.6])
    gt = make_instances((100, 100), [GT_BOX], [0])
    labels = label_anchors(anchors, [gt], build_anchor_matcher(cfg), NUM_CLASSES).labels
    assert labels.tolist() == [[NUM_CLASSES, IGNORE_LABEL, IGNORE_LABEL, 0]]


def test_each_anchor_takes_its_best_box_and_batches_stack() -> None:
    cfg = retinanet_cfg(ours=True)
    matcher = build_anchor_matcher(cfg)
    anchors = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [200.0, 200.0, 210.0, 210.0]]
    )
    gt = make_instances((256, 256), [[51.0, 51.0, 61.0, 61.0], [0.0, 0.0, 10.0, 11.0]], [2, 4])
    empty = make_instances((256, 256), [], [])
    targets = label_anchors(anchors, [gt, empty], matcher, NUM_CLASSES)
    labels, boxes = targets.labels, targets.matched_boxes
    assert labels.shape == (2, 3) and boxes.shape == (2, 3, 4)
    assert labels[0].tolist() == [4, 2, NUM_CLASSES]
    torch.testing.assert_close(boxes[0, :2], gt.gt_boxes.tensor[[1, 0]])
    # No ground truth: every anchor is background, matched boxes zero.
    assert labels[1].tolist() == [NUM_CLASSES] * 3
    assert not boxes[1].any() and not targets.anchor_iou[1].any()


def _grid(stride: float, size: float, count: int, offset: float) -> torch.Tensor:
    """Square anchors of ``size`` centred on a count x count grid, row by row."""
    centres = (torch.arange(count, dtype=torch.float32) + offset) * stride
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    centre = torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def test_atss_threshold_is_mean_plus_std_of_the_candidates() -> None:
    # Level 0: 10 px anchors, centres 5, 15, 25, ...; the four nearest the box centre (20, 20)
    # each cover a quarter of the 20 px box: IoU 0.25. Level 1: 20 px anchors, centres 0, 20,
    # 40; the nearest is the box itself (IoU 1), the next three touch it only (IoU 0).
    # Candidates' IoU: 4 x 0.25, 1, 3 x 0: mean 0.25, std sqrt(0.75 / 7) = 0.327, so the
    # threshold 0.577 keeps only the exact anchor.
    level0, level1 = _grid(10, 10, 5, 0.5), _grid(20, 20, 3, 0.0)
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    matched, positive, iou = atss_assign([level0, level1], gt, topk=4)
    exact = len(level0) + 4  # centre (20, 20) in level 1's 3 x 3 grid
    assert torch.nonzero(positive).squeeze(1).tolist() == [exact]
    assert iou[exact].item() == pytest.approx(1.0)
    assert (matched == 0).all()
    assert iou[6].item() == pytest.approx(0.25)  # centre (15, 15), a negative candidate


def test_atss_anchor_claimed_by_two_boxes_takes_the_higher_iou() -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 11.0, 10.0]])  # IoU 0.83, 0.91
    matched, positive, iou = atss_assign([anchors], boxes, topk=1)
    assert positive.tolist() == [True]
    assert matched.tolist() == [1] and iou.item() == pytest.approx(10 / 11)


def test_atss_candidate_centre_must_lie_inside_the_box() -> None:
    # The nearest anchor, centred at (0, 20), contains the whole box (IoU 0.28, the only
    # candidate, so the threshold) but its centre lies below the box (y from 11 to 19).
    level = _grid(20, 20, 2, 0.0)  # centres (0, 0), (20, 0), (0, 20), (20, 20)
    gt = torch.tensor([[-5.0, 11.0, 9.0, 19.0]])
    _, positive, _ = atss_assign([level], gt, topk=1)
    assert not positive.any()


def test_atss_assigner_labels_and_empty_images() -> None:
    cfg = retinanet_cfg(ours=True)
    cfg.MODEL.RETINANET_EXT.ASSIGNER = "ATSSAssigner"
    cfg.MODEL.RETINANET_EXT.ATSS_TOPK = 4
    assigner = build_assigner(cfg)
    assert isinstance(assigner, ATSSAssigner) and assigner.topk == 4
    level0, level1 = _grid(10, 10, 5, 0.5), _grid(20, 20, 3, 0.0)
    gt = make_instances((50, 50), [[10.0, 10.0, 30.0, 30.0]], [3])
    empty = make_instances((50, 50), [], [])
    targets = assigner([Boxes(level0), Boxes(level1)], [gt, empty], NUM_CLASSES)
    exact = len(level0) + 4
    expected = torch.full((2, len(level0) + len(level1)), NUM_CLASSES)
    expected[0, exact] = 3
    assert torch.equal(targets.labels, expected)  # no ignored anchors in ATSS
    torch.testing.assert_close(targets.matched_boxes[0, exact], gt.gt_boxes.tensor[0])
    assert not targets.matched_boxes[1].any()
