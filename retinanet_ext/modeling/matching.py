"""Training targets: each anchor labelled foreground (a class), background or ignored.

Paper, Sec. 4 ("Anchors"): IoU >= 0.5 with a ground-truth box is foreground, IoU < 0.4 is
background, in between is ignored. Thresholds and labels come from
``MODEL.RETINANET.IOU_THRESHOLDS`` / ``IOU_LABELS``; Detectron2's low-quality matches (every
ground-truth box also claims its best anchors) from
``MODEL.RETINANET_EXT.ALLOW_LOW_QUALITY_MATCHES``.
"""

from __future__ import annotations

from collections.abc import Sequence

from retinanet_ext.modeling._cfg import retinanet_ext_node

import torch
from detectron2.config import CfgNode
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances, pairwise_iou
from torch import Tensor

__all__ = ["IGNORE_LABEL", "build_anchor_matcher", "label_anchors"]

IGNORE_LABEL = -1
"""Label of anchors that contribute to no loss."""


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
) -> tuple[Tensor, Tensor]:
    """Match anchors to ground-truth boxes, image by image.

    Args:
        anchors: Tensor[R, 4], all anchors of an image (levels concatenated), XYXY pixels.
        gt_instances: N Instances with ``gt_boxes`` (Boxes[G_i]) and ``gt_classes``
            (Tensor[G_i] in [0, num_classes)); G_i may be 0.
        matcher: labels each anchor 1 (foreground), 0 (background) or -1 (ignored).
        num_classes: K; background anchors get label K.

    Returns:
        labels: Tensor[N, R] int64, in {-1 (ignored), 0..K-1 (class), K (background)}.
        matched_gt_boxes: Tensor[N, R, 4], the matched ground-truth box of each anchor;
            meaningful only where 0 <= label < K (zeros for images without boxes).
    """
    anchor_boxes = Boxes(anchors)
    labels, matched_boxes = [], []
    for instances in gt_instances:
        if len(instances) == 0:
            # No objects: every anchor is background (the matcher's IoU-0 label).
            labels.append(torch.full_like(anchors[:, 0], num_classes, dtype=torch.int64))
            matched_boxes.append(torch.zeros_like(anchors))
            continue
        classes = instances.gt_classes
        if int(classes.min()) < 0 or int(classes.max()) >= num_classes:
            raise ValueError(
                f"gt_classes must be in [0, {num_classes}) (MODEL.RETINANET.NUM_CLASSES), "
                f"found {sorted(set(classes.tolist()))}."
            )
        iou = pairwise_iou(instances.gt_boxes, anchor_boxes)  # (G, R)
        matched_idxs, match_labels = matcher(iou)
        del iou
        image_labels = classes[matched_idxs].to(torch.int64)
        image_labels = torch.where(
            match_labels == 0, torch.full_like(image_labels, num_classes), image_labels
        )
        image_labels = torch.where(
            match_labels == IGNORE_LABEL, torch.full_like(image_labels, IGNORE_LABEL), image_labels
        )
        labels.append(image_labels)
        matched_boxes.append(instances.gt_boxes.tensor[matched_idxs])
    return torch.stack(labels), torch.stack(matched_boxes)
