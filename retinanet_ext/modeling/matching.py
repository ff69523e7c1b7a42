"""Training targets: each anchor assigned a class, background, or ignored.

Paper, Sec. 4 ("Anchors"): IoU >= 0.5 with a ground-truth box is foreground, IoU < 0.4 is
background, in between is ignored (:class:`IoUAssigner`, Detectron2's ``Matcher`` with
``MODEL.RETINANET.IOU_THRESHOLDS`` / ``IOU_LABELS`` and, as in Detectron2, low-quality matches:
every ground-truth box also claims its best anchors). Other assignment rules are registered in
:data:`RETINANET_EXT_ASSIGNER_REGISTRY` and chosen by ``MODEL.RETINANET_EXT.ASSIGNER``.

An assigner turns anchors and ground truth into :class:`AnchorTargets`, the one object the
losses read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.registry import Registry
from torch import Tensor

from retinanet_ext.modeling._cfg import get_registered, retinanet_ext_node

__all__ = [
    "IGNORE_LABEL",
    "RETINANET_EXT_ASSIGNER_REGISTRY",
    "ATSSAssigner",
    "AnchorTargets",
    "IoUAssigner",
    "atss_assign",
    "build_anchor_matcher",
    "build_assigner",
    "check_gt_classes",
    "label_anchors",
]

IGNORE_LABEL = -1
"""Label of anchors that contribute to no loss."""

RETINANET_EXT_ASSIGNER_REGISTRY = Registry("RETINANET_EXT_ASSIGNER")
RETINANET_EXT_ASSIGNER_REGISTRY.__doc__ = """
Anchor assigners, built as ``obj(cfg)`` and called as
``assigner(anchors: list[Boxes] per level, gt_instances: list[Instances], num_classes)
-> AnchorTargets``. Chosen by ``MODEL.RETINANET_EXT.ASSIGNER``.
"""


@dataclass
class AnchorTargets:
    """What every anchor of a batch should predict (N images, R anchors, K classes).

    Attributes:
        labels: Tensor[N, R] int64 in {-1 (ignored), 0..K-1 (class), K (background)}.
        matched_boxes: Tensor[N, R, 4], XYXY pixels, the assigned ground-truth box of each
            anchor; meaningful only where :attr:`foreground`.
        anchor_iou: Tensor[N, R], IoU of each anchor with its assigned ground-truth box
            (0 for images without boxes).
        num_classes: K.
        pred_iou: Tensor[N, R] or None: IoU of each anchor's decoded prediction with its
            ground-truth box, detached, on foreground anchors (0 elsewhere). Filled by the
            criterion when a loss asks for it (``needs_prediction_iou``).
    """

    labels: Tensor
    matched_boxes: Tensor
    anchor_iou: Tensor
    num_classes: int
    pred_iou: Tensor | None = None

    @property
    def valid(self) -> Tensor:
        """Tensor[N, R] bool: anchors that take part in the classification loss."""
        return self.labels >= 0

    @property
    def foreground(self) -> Tensor:
        """Tensor[N, R] bool: anchors assigned to a ground-truth box."""
        return (self.labels >= 0) & (self.labels != self.num_classes)

    def classification_targets(
        self, quality: Tensor | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """Tensor[M, K] over the M valid anchors (in ``labels[valid]`` order): 1 (or the
        anchor's ``quality``, Tensor[N, R]) at the assigned class, 0 elsewhere."""
        valid_labels = self.labels[self.valid]
        targets = torch.zeros(
            (valid_labels.numel(), self.num_classes), dtype=dtype, device=self.labels.device
        )
        rows = torch.nonzero(valid_labels != self.num_classes).squeeze(1)
        values = 1.0 if quality is None else quality[self.valid][rows].to(targets.dtype)
        targets[rows, valid_labels[rows]] = values
        return targets


def check_gt_classes(instances: Instances, num_classes: int) -> None:
    """Ground-truth classes must be in [0, K): a wrong NUM_CLASSES, not a crash in indexing."""
    classes = instances.gt_classes
    if len(classes) and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        raise ValueError(
            f"gt_classes must be in [0, {num_classes}) (MODEL.RETINANET.NUM_CLASSES), "
            f"found {sorted(set(classes.tolist()))}."
        )


def build_anchor_matcher(cfg: CfgNode) -> Matcher:
    """Detectron2's :class:`Matcher` with RetinaNet's thresholds and labels from the config."""
    return Matcher(
        list(cfg.MODEL.RETINANET.IOU_THRESHOLDS),
        list(cfg.MODEL.RETINANET.IOU_LABELS),
        allow_low_quality_matches=retinanet_ext_node(cfg).ALLOW_LOW_QUALITY_MATCHES,
    )


@torch.no_grad()
def label_anchors(
    anchors: Tensor,
    gt_instances: Sequence[Instances],
    matcher: Matcher,
    num_classes: int,
) -> AnchorTargets:
    """Match anchors to ground-truth boxes by IoU, image by image.

    Args:
        anchors: Tensor[R, 4], all anchors of an image (levels concatenated), XYXY pixels.
        gt_instances: N Instances with ``gt_boxes`` (Boxes[G_i]) and ``gt_classes``
            (Tensor[G_i] in [0, num_classes)); G_i may be 0.
        matcher: labels each anchor 1 (foreground), 0 (background) or -1 (ignored).
        num_classes: K; background anchors get label K.
    """
    anchor_boxes = Boxes(anchors)
    labels, matched_boxes, anchor_iou = [], [], []
    for instances in gt_instances:
        if len(instances) == 0:
            # No objects: every anchor is background (the matcher's IoU-0 label).
            labels.append(torch.full_like(anchors[:, 0], num_classes, dtype=torch.int64))
            matched_boxes.append(torch.zeros_like(anchors))
            anchor_iou.append(torch.zeros_like(anchors[:, 0]))
            continue
        check_gt_classes(instances, num_classes)
        iou = pairwise_iou(instances.gt_boxes, anchor_boxes)  # (G, R)
        matched_idxs, match_labels = matcher(iou)
        anchor_iou.append(iou.max(dim=0).values)  # the matcher picks the argmax box
        del iou
        image_labels = instances.gt_classes[matched_idxs].to(torch.int64)
        image_labels = torch.where(
            match_labels == 0, torch.full_like(image_labels, num_classes), image_labels
        )
        image_labels = torch.where(
            match_labels == IGNORE_LABEL, torch.full_like(image_labels, IGNORE_LABEL), image_labels
        )
        labels.append(image_labels)
        matched_boxes.append(instances.gt_boxes.tensor[matched_idxs])
    return AnchorTargets(
        labels=torch.stack(labels),
        matched_boxes=torch.stack(matched_boxes),
        anchor_iou=torch.stack(anchor_iou),
        num_classes=num_classes,
    )


@RETINANET_EXT_ASSIGNER_REGISTRY.register()
class IoUAssigner:
    """RetinaNet's IoU thresholds (paper, Sec. 4; Detectron2's default)."""

    @configurable
    def __init__(self, *, matcher: Matcher) -> None:
        self.matcher = matcher

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return {"matcher": build_anchor_matcher(cfg)}

    def __call__(
        self, anchors: Sequence[Boxes], gt_instances: Sequence[Instances], num_classes: int
    ) -> AnchorTargets:
        return label_anchors(Boxes.cat(anchors).tensor, gt_instances, self.matcher, num_classes)


@torch.no_grad()
def atss_assign(
    anchors_per_level: Sequence[Tensor], gt_boxes: Tensor, topk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Adaptive Training Sample Selection for one image (Zhang et al., CVPR 2020, Alg. 1).

    For each ground-truth box: on every level the ``topk`` anchors whose centres are closest
    to the box centre are candidates; candidates whose IoU with the box is at least the mean
    plus the standard deviation of the candidates' IoUs, and whose centre lies inside the
    box, are positives. An anchor positive for several boxes takes the one of highest IoU.

    Args:
        anchors_per_level: per level, Tensor[R_i, 4] XYXY pixels.
        gt_boxes: Tensor[G, 4] XYXY pixels, G >= 1.
        topk: candidates per level and box (the paper's best: 9).

    Returns:
        matched_idxs: Tensor[R] int64, the box each anchor is assigned to (its best-IoU box
            where it is negative); positive: Tensor[R] bool; anchor_iou: Tensor[R], IoU with
            ``matched_idxs``' box.
    """
    anchors = torch.cat(list(anchors_per_level))
    iou = pairwise_iou(Boxes(gt_boxes), Boxes(anchors))  # (G, R)
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    candidates, start = [], 0
    for level_anchors in anchors_per_level:
        distances = torch.cdist(anchor_centres[start : start + len(level_anchors)], gt_centres)
        k = min(topk, len(level_anchors))
        candidates.append(distances.topk(k, dim=0, largest=False).indices + start)  # (k, G)
        start += len(level_anchors)
    candidates = torch.cat(candidates)  # (C, G)
    candidate_iou = iou.gather(1, candidates.t()).t()  # (C, G)
    # mean + standard deviation (unbiased, as the paper's code; 0 for a single candidate)
    threshold = candidate_iou.mean(dim=0) + candidate_iou.std(dim=0).nan_to_num(0.0)
    centres = anchor_centres[candidates]  # (C, G, 2)
    inside = (centres > gt_boxes[None, :, :2]).all(-1) & (centres < gt_boxes[None, :, 2:]).all(-1)
    is_positive = (candidate_iou >= threshold) & inside
    positive_iou = torch.full_like(iou, -1.0)
    gt_index = torch.arange(len(gt_boxes), device=gt_boxes.device).expand_as(candidates)
    positive_iou[gt_index[is_positive], candidates[is_positive]] = candidate_iou[is_positive]
    best_positive, matched_positive = positive_iou.max(dim=0)
    anchor_iou, matched_any = iou.max(dim=0)
    positive = best_positive >= 0
    matched_idxs = torch.where(positive, matched_positive, matched_any)
    anchor_iou = torch.where(positive, best_positive, anchor_iou)
    return matched_idxs, positive, anchor_iou


@RETINANET_EXT_ASSIGNER_REGISTRY.register()
class ATSSAssigner:
    """ATSS (see :func:`atss_assign`): every anchor is foreground or background, none ignored;
    ``MODEL.RETINANET_EXT.ATSS_TOPK`` candidates per level."""

    @configurable
    def __init__(self, *, topk: int) -> None:
        if topk < 1:
            raise ValueError(f"MODEL.RETINANET_EXT.ATSS_TOPK must be >= 1, got {topk}.")
        self.topk = topk

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return {"topk": retinanet_ext_node(cfg).ATSS_TOPK}

    @torch.no_grad()
    def __call__(
        self, anchors: Sequence[Boxes], gt_instances: Sequence[Instances], num_classes: int
    ) -> AnchorTargets:
        per_level = [boxes.tensor for boxes in anchors]
        all_anchors = torch.cat(per_level)
        labels, matched_boxes, anchor_iou = [], [], []
        for instances in gt_instances:
            if len(instances) == 0:
                labels.append(torch.full_like(all_anchors[:, 0], num_classes, dtype=torch.int64))
                matched_boxes.append(torch.zeros_like(all_anchors))
                anchor_iou.append(torch.zeros_like(all_anchors[:, 0]))
                continue
            check_gt_classes(instances, num_classes)
            gt_boxes = instances.gt_boxes.tensor
            matched_idxs, positive, iou = atss_assign(per_level, gt_boxes, self.topk)
            image_labels = instances.gt_classes[matched_idxs].to(torch.int64)
            labels.append(torch.where(positive, image_labels, num_classes))
            matched_boxes.append(gt_boxes[matched_idxs])
            anchor_iou.append(iou)
        return AnchorTargets(
            labels=torch.stack(labels),
            matched_boxes=torch.stack(matched_boxes),
            anchor_iou=torch.stack(anchor_iou),
            num_classes=num_classes,
        )


def build_assigner(cfg: CfgNode):
    """The assigner named by ``MODEL.RETINANET_EXT.ASSIGNER``."""
    name = retinanet_ext_node(cfg).ASSIGNER
    return get_registered(RETINANET_EXT_ASSIGNER_REGISTRY, name, "MODEL.RETINANET_EXT.ASSIGNER")(
        cfg
    )
