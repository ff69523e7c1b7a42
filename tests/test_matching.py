"""Anchor labelling: IoU thresholds, ignored band, low-quality matches, empty images."""

from __future__ import annotations

from retinanet_ext.modeling.matching import IGNORE_LABEL, build_anchor_matcher, label_anchors

import torch
from _modeling_helpers import make_instances, retinanet_cfg

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
