"""From dense predictions to detections (paper, Sec. 4.1 "Inference").

Per image and pyramid level: keep scores above a threshold, then at most the top-k of them;
decode their boxes; merge the levels; class-wise NMS; keep the best detections per image.
The threshold and the decoding run on all images and levels at once; top-k runs per
(image, level) segment of the surviving candidates, NMS per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

__all__ = ["SoftNMS", "decode_detections", "select_candidates", "soft_nms", "topk_per_segment"]

# Candidates are preselected on logits with this margin below logit(threshold), then
# checked exactly on sigmoid(logit) (float32 sigmoid is accurate to far less than this).
_LOGIT_MARGIN = 1e-3


def topk_per_segment(values: Tensor, segment_bounds: Tensor, k: int) -> Tensor:
    """Positions of the k largest values of each contiguous segment, best first per segment.

    Args:
        values: Tensor[M].
        segment_bounds: Tensor[G + 1] int64, non-decreasing; segment g is
            ``values[bounds[g]:bounds[g + 1]]`` (it may be empty).
        k: how many to keep per segment at most.

    Returns:
        Tensor[M'] int64 positions into ``values``, segment by segment, each segment's in
        descending order of value. A partial selection (``topk``) per segment, O(M) in all:
        the loop runs over segments (images x levels), never over elements.
    """
    bounds = segment_bounds.tolist()
    kept = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        if end > start:
            order = values[start:end].topk(min(k, end - start), sorted=True).indices
            kept.append(order + start)
    if not kept:
        return torch.zeros(0, dtype=torch.int64, device=values.device)
    return torch.cat(kept)


def select_candidates(
    logits: Tensor,
    anchors_per_level: Sequence[int],
    score_thresh: float,
    topk_candidates: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per image and level, the (anchor, class) pairs with score > threshold, top-k of them.

    Args:
        logits: Tensor[N, R, K] class logits, levels concatenated along R.
        anchors_per_level: R_i = H_i * W_i * A for each level (sum R).
        score_thresh: keep sigmoid(logit) > score_thresh.
        topk_candidates: at most this many per image and level.

    Returns:
        image_idx, anchor_idx, class_idx: Tensor[C] int64; scores: Tensor[C] (probabilities).
        Grouped by image, then level; within a group by descending score.
    """
    num_images, num_anchors, num_classes = logits.shape
    flat_logits = logits.reshape(-1)
    # Sigmoid is monotonic: select on logits, and take the sigmoid of the survivors only.
    if score_thresh <= 0.0:
        candidates = torch.arange(flat_logits.numel(), device=logits.device)
    elif score_thresh >= 1.0:
        candidates = torch.zeros(0, dtype=torch.int64, device=logits.device)
    else:
        logit_thresh = math.log(score_thresh / (1.0 - score_thresh)) - _LOGIT_MARGIN
        candidates = torch.nonzero(flat_logits > logit_thresh).squeeze(1)
    # Candidates are in flat (image, anchor, class) order, so each (image, level) group is a
    # contiguous run; its bounds come from a binary search of the group starts.
    level_starts = [0]
    for count in anchors_per_level:
        level_starts.append(level_starts[-1] + count)
    group_starts = torch.tensor(
        [
            image * num_anchors * num_classes + start * num_classes
            for image in range(num_images)
            for start in level_starts[:-1]
        ]
        + [num_images * num_anchors * num_classes],
        device=logits.device,
    )
    bounds = torch.searchsorted(candidates, group_starts)
    candidate_logits = flat_logits[candidates]
    kept = candidates[topk_per_segment(candidate_logits, bounds, topk_candidates)]

    scores = torch.sigmoid(flat_logits[kept])
    above = scores > score_thresh  # exact test, as on probabilities
    kept, scores = kept[above], scores[above]
    image_idx = torch.div(kept, num_anchors * num_classes, rounding_mode="floor")
    anchor_class = kept - image_idx * (num_anchors * num_classes)
    anchor_idx = torch.div(anchor_class, num_classes, rounding_mode="floor")
    class_idx = anchor_class - anchor_idx * num_classes
    return image_idx, anchor_idx, class_idx, scores


@dataclass(frozen=True)
class SoftNMS:
    """Soft-NMS settings (Bodla et al., ICCV 2017): instead of removing a box that overlaps a
    better one of its class, decay its score: ``"linear"``, by (1 - IoU) where IoU exceeds the
    NMS threshold, or ``"gaussian"``, by exp(-IoU^2 / sigma). Boxes whose score falls to
    ``min_score`` or below are dropped."""

    method: str
    sigma: float
    min_score: float

    def __post_init__(self) -> None:
        if self.method not in ("linear", "gaussian"):
            raise ValueError(
                "MODEL.RETINANET_EXT.SOFT_NMS_METHOD must be '' (hard NMS), 'linear' or "
                f"'gaussian', got {self.method!r}."
            )


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    settings: SoftNMS,
    iou_threshold: float,
    max_detections: int,
) -> tuple[Tensor, Tensor]:
    """Class-wise Soft-NMS of one image.

    Args:
        boxes: Tensor[M, 4] XYXY; scores: Tensor[M]; classes: Tensor[M] int64.
        settings: the decay (see :class:`SoftNMS`).
        iou_threshold: where the linear decay starts (the NMS threshold).
        max_detections: stop after keeping this many.

    Returns:
        The kept positions into ``boxes``, Tensor[D] int64, best first, and their decayed
        scores, Tensor[D]. The loop runs once per kept box (at most ``max_detections``).
    """
    # Offsetting each class apart makes boxes of different classes never overlap.
    offsets = classes.to(boxes.dtype) * (boxes.max() - boxes.min() + 1)
    class_boxes = boxes + offsets[:, None]
    scores = scores.clone()
    remaining = torch.nonzero(scores > settings.min_score).squeeze(1)
    keep, kept_scores = [], []
    while remaining.numel() and len(keep) < max_detections:
        best_position = int(scores[remaining].argmax())
        best = remaining[best_position]
        keep.append(best)
        kept_scores.append(scores[best])
        remaining = torch.cat((remaining[:best_position], remaining[best_position + 1 :]))
        iou = box_iou(class_boxes[best][None], class_boxes[remaining])[0]
        if settings.method == "linear":
            decay = torch.where(iou > iou_threshold, 1 - iou, torch.ones_like(iou))
        else:
            decay = torch.exp(-(iou * iou) / settings.sigma)
        scores[remaining] *= decay
        remaining = remaining[scores[remaining] > settings.min_score]
    if not keep:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device), scores[:0]
    return torch.stack(keep), torch.stack(kept_scores)


def decode_detections(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    anchors_per_level: Sequence[int],
    image_sizes: Sequence[tuple[int, int]],
    box2box_transform: Box2BoxTransform,
    *,
    score_thresh: float,
    topk_candidates: int,
    nms_thresh: float,
    max_detections_per_image: int,
    soft_nms_settings: SoftNMS | None = None,
) -> list[Instances]:
    """Detections of a batch, in the input (padded-batch) coordinates.

    Args:
        logits: Tensor[N, R, K] class logits.
        deltas: Tensor[N, R, 4] box deltas.
        anchors: Tensor[R, 4] XYXY pixels.
        anchors_per_level: R_i per level, see :func:`select_candidates`.
        image_sizes: (height, width) of each image before padding.
        box2box_transform: decodes ``deltas`` relative to ``anchors``.
        score_thresh, topk_candidates: see :func:`select_candidates`.
        nms_thresh: NMS suppresses a box whose IoU with a better box of the same class
            exceeds this.
        max_detections_per_image: keep this many best detections after NMS.
        soft_nms_settings: Soft-NMS instead of NMS (None: class-wise NMS, the paper's).

    Returns:
        Per image, Instances with ``pred_boxes`` (Boxes[D], XYXY, not clipped),
        ``scores`` (Tensor[D]) and ``pred_classes`` (Tensor[D] int64), best first.
    """
    image_idx, anchor_idx, class_idx, scores = select_candidates(
        logits, anchors_per_level, score_thresh, topk_candidates
    )
    boxes = box2box_transform.apply_deltas(deltas[image_idx, anchor_idx], anchors[anchor_idx])
    counts = torch.bincount(image_idx, minlength=len(image_sizes)).tolist()
    results = []
    for image_size, image_boxes, image_scores, image_classes in zip(
        image_sizes,
        boxes.split(counts),
        scores.split(counts),
        class_idx.split(counts),
        strict=True,
    ):
        keep, kept_scores = _suppress_duplicates(
            image_boxes, image_scores, image_classes, nms_thresh, max_detections_per_image,
            soft_nms_settings,
        )
        results.append(
            Instances(
                tuple(image_size),
                pred_boxes=Boxes(image_boxes[keep]),
                scores=kept_scores,
                pred_classes=image_classes[keep],
            )
        )
    return results


def _suppress_duplicates(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    nms_thresh: float,
    max_detections_per_image: int,
    soft_nms_settings: SoftNMS | None,
) -> tuple[Tensor, Tensor]:
    """Class-wise NMS (or Soft-NMS) of one image's candidates: the kept indices, best
    first, at most ``max_detections_per_image``, and their (possibly decayed) scores."""
    if soft_nms_settings is None:
        keep = batched_nms(boxes.float(), scores, classes, nms_thresh)
        keep = keep[:max_detections_per_image]
        return keep, scores[keep]
    return soft_nms(
        boxes.float(), scores, classes, soft_nms_settings, nms_thresh, max_detections_per_image,
    )
