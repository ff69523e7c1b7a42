"""Post-processing: score threshold, top-k per level, decoding, class-wise NMS, max detections."""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.modeling.box_regression import Box2BoxTransform

from retinanet_ext.modeling.postprocess import (
    SoftNMS,
    decode_detections,
    select_candidates,
    topk_per_segment,
)

TRANSFORM = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_topk_per_segment_keeps_at_most_k_best_first() -> None:
    values = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2])
    bounds = torch.tensor([0, 4, 4, 6, 7])  # segments [0, 4), [4, 4) empty, [4, 6), [6, 7)
    keep = topk_per_segment(values, bounds, k=2)
    assert keep.tolist() == [1, 3, 5, 4, 6]
    assert topk_per_segment(values[:0], torch.tensor([0, 0]), k=2).tolist() == []


def test_score_threshold_is_strict_and_exact() -> None:
    logits = torch.full((1, 4, 1), -10.0)
    logits[0, 0, 0] = _logit(0.06)
    logits[0, 1, 0] = _logit(0.04)
    logits[0, 2, 0] = torch.logit(torch.tensor(0.05)).item()  # sigmoid gives 0.05 itself
    _, anchor_idx, class_idx, scores = select_candidates(logits, [4], 0.05, 1000)
    assert anchor_idx.tolist() == [0]
    assert class_idx.tolist() == [0]
    assert scores.tolist() == pytest.approx([0.06])
    assert (torch.sigmoid(logits[0, 2, 0]) > 0.05).item() is False


def test_topk_is_per_image_and_level() -> None:
    generator = torch.Generator().manual_seed(0)
    # Two images, two levels of 30 and 20 anchors, 3 classes, all above threshold.
    logits = torch.rand(2, 50, 3, generator=generator) * 4
    image_idx, anchor_idx, class_idx, scores = select_candidates(logits, [30, 20], 0.05, 7)
    assert len(scores) == 2 * 2 * 7
    for image in range(2):
        for level, (start, end) in enumerate([(0, 30), (30, 50)]):
            in_group = (image_idx == image) & (anchor_idx >= start) & (anchor_idx < end)
            assert in_group.sum().item() == 7
            expected = torch.sigmoid(logits[image, start:end]).flatten().topk(7).values
            torch.testing.assert_close(scores[in_group], expected)
            group_rows = torch.nonzero(in_group).squeeze(1)
            assert group_rows.tolist() == list(range(group_rows[0], group_rows[0] + 7)), level
    torch.testing.assert_close(scores, torch.sigmoid(logits[image_idx, anchor_idx, class_idx]))


# Detectron2's defaults (MODEL.RETINANET.*_TEST, TEST.DETECTIONS_PER_IMAGE).
SETTINGS = dict(
    score_thresh=0.05, topk_candidates=1000, nms_thresh=0.5, max_detections_per_image=100
)


def _decode_boxes(boxes: list[list[float]], classes: list[int], scores: list[float], **kwargs):
    """Run decode_detections on anchors equal to ``boxes`` (zero deltas), one image."""
    kwargs = {**SETTINGS, **kwargs}
    num_classes = max(classes) + 1
    anchors = torch.tensor(boxes)
    logits = torch.full((1, len(boxes), num_classes), -20.0)
    for row, (cls, score) in enumerate(zip(classes, scores, strict=True)):
        logits[0, row, cls] = _logit(score)
    deltas = torch.zeros(1, len(boxes), 4)
    (result,) = decode_detections(
        logits, deltas, anchors, [len(boxes)], [(200, 200)], TRANSFORM, **kwargs
    )
    return result


def test_nms_suppresses_iou_051_keeps_iou_049_and_other_classes() -> None:
    reference = [0.0, 0.0, 100.0, 100.0]
    at_051 = [0.0, 0.0, 100.0, 51.0]  # nested: IoU = 51 / 100
    at_049 = [0.0, 0.0, 100.0, 49.0]
    result = _decode_boxes([reference, at_051], [0, 0], [0.9, 0.8], nms_thresh=0.5)
    assert result.scores.tolist() == pytest.approx([0.9])
    result = _decode_boxes([reference, at_049], [0, 0], [0.9, 0.8], nms_thresh=0.5)
    assert result.scores.tolist() == pytest.approx([0.9, 0.8])
    torch.testing.assert_close(result.pred_boxes.tensor, torch.tensor([reference, at_049]))
    result = _decode_boxes([reference, at_051], [0, 1], [0.9, 0.8], nms_thresh=0.5)
    assert result.pred_classes.tolist() == [0, 1]


def test_max_detections_and_best_first() -> None:
    boxes = [[float(10 * i), 0.0, float(10 * i + 8), 8.0] for i in range(10)]
    scores = [0.1 + 0.08 * i for i in range(10)]
    result = _decode_boxes(boxes, [0] * 10, scores, max_detections_per_image=4)
    assert result.scores.tolist() == pytest.approx(sorted(scores, reverse=True)[:4])
    assert result.image_size == (200, 200)


def test_deltas_are_decoded_and_images_are_separate() -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])
    logits = torch.full((2, 2, 2), -20.0)
    logits[0, 0, 1] = 3.0
    logits[1, 1, 0] = 2.0
    deltas = torch.zeros(2, 2, 4)
    deltas[0, 0] = torch.tensor([0.1, 0.0, math.log(2.0), 0.0])  # shift 1 px, double width
    results = decode_detections(
        logits, deltas, anchors, [1, 1], [(64, 64), (48, 48)], TRANSFORM, **SETTINGS
    )
    assert [len(r) for r in results] == [1, 1]
    torch.testing.assert_close(results[0].pred_boxes.tensor, torch.tensor([[-4.0, 0, 16, 10]]))
    assert results[0].pred_classes.tolist() == [1]
    torch.testing.assert_close(results[1].pred_boxes.tensor, anchors[1:])
    assert results[1].pred_classes.tolist() == [0]
    assert results[1].image_size == (48, 48)


def test_no_candidates_gives_empty_instances() -> None:
    logits = torch.full((1, 3, 2), -20.0)
    (result,) = decode_detections(
        logits, torch.zeros(1, 3, 4), torch.ones(3, 4).cumsum(1), [3], [(8, 8)], TRANSFORM,
        **SETTINGS,
    )
    assert len(result) == 0
    assert result.pred_boxes.tensor.shape == (0, 4)


@pytest.mark.parametrize(
    ("method", "expected_second"),
    [("linear", 0.8 * (1 - 0.6)), ("gaussian", 0.8 * math.exp(-(0.6**2) / 0.5))],
)
def test_soft_nms_decays_overlapping_scores_of_the_same_class(method, expected_second) -> None:
    reference = [0.0, 0.0, 100.0, 100.0]
    at_06 = [0.0, 0.0, 100.0, 60.0]  # nested: IoU 0.6
    far = [300.0, 300.0, 310.0, 310.0]
    settings = SoftNMS(method, sigma=0.5, min_score=0.001)
    result = _decode_boxes(
        [reference, at_06, far, reference], [0, 0, 0, 1], [0.9, 0.8, 0.7, 0.6],
        soft_nms_settings=settings,
    )
    # Best first: 0.9; the far box and the other class keep their scores.
    assert result.scores.tolist() == pytest.approx(
        sorted([0.9, expected_second, 0.7, 0.6], reverse=True), rel=1e-5
    )
    assert result.pred_classes.tolist() == [0, 0, 1, 0]


def test_soft_nms_linear_keeps_boxes_below_the_threshold_and_drops_low_scores() -> None:
    reference = [0.0, 0.0, 100.0, 100.0]
    at_04 = [0.0, 0.0, 100.0, 40.0]  # IoU 0.4 < 0.5: untouched by the linear decay
    at_099 = [0.0, 0.0, 100.0, 99.0]  # IoU 0.99: 0.8 * 0.01 = 0.008 < min_score
    settings = SoftNMS("linear", sigma=0.5, min_score=0.05)
    result = _decode_boxes(
        [reference, at_04, at_099], [0, 0, 0], [0.9, 0.85, 0.8], soft_nms_settings=settings
    )
    assert result.scores.tolist() == pytest.approx([0.9, 0.85])
    limited = _decode_boxes(
        [reference, at_04], [0, 0], [0.9, 0.85], soft_nms_settings=settings,
        max_detections_per_image=1,
    )
    assert len(limited) == 1


def test_soft_nms_method_is_checked() -> None:
    with pytest.raises(ValueError, match="SOFT_NMS_METHOD"):
        SoftNMS("box", sigma=0.5, min_score=0.001)
