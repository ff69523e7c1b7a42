"""Anchor coverage of a config's training data: the report ``retinanet-ext analyze-anchors``
prints, and the warning ``train_net.py`` logs at start when it is poor."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from detectron2.config import CfgNode

from retinanet_ext.analysis.coverage import (
    BoxCoverage,
    best_iou,
    build_anchor_layout,
    coverage_at_training_resize,
    feature_shapes,
    one_thread,
    training_resize,
    training_sizes,
)
from retinanet_ext.analysis.report import (
    coverage_rows,
    coverage_table,
    share_without_anchor,
)
from retinanet_ext.analysis.suggest import (
    POOR_COVERAGE,
    AnchorSuggestion,
    candidate_config,
    list_text,
    per_level,
    suggest_anchors,
)
from retinanet_ext.data import DatasetError, dataset_classes, validated_boxes
from retinanet_ext.data.box_sizes import GroundTruthBoxes

__all__ = [
    "resolve_anchors_from_data",
    "AnchorAnalysis",
    "analyze_anchors",
    "sample_images",
    "training_boxes",
    "warn_if_poor_anchor_coverage",
]

logger = logging.getLogger("retinanet_ext.analysis")


def training_boxes(dataset_names: Sequence[str]) -> tuple[GroundTruthBoxes, list[str]]:
    """The validated non-crowd boxes of several datasets, and their common classes.

    Raises:
        DatasetError: a dataset is not registered or is unusable, or two datasets have
            different classes.
    """
    if not dataset_names:
        raise DatasetError("No datasets to analyse: DATASETS.TRAIN is empty (or pass --dataset).")
    classes = dataset_classes(dataset_names[0])
    parts = []
    for name in dataset_names:
        if dataset_classes(name) != classes:
            raise DatasetError(f"Datasets '{dataset_names[0]}' and '{name}' have different "
                               "classes; analyse them separately.")
        parts.append(validated_boxes(name))
    offsets = np.cumsum([0] + [len(p.image_sizes) for p in parts])
    return GroundTruthBoxes(
        boxes=np.concatenate([p.boxes for p in parts]),
        classes=np.concatenate([p.classes for p in parts]),
        image_index=np.concatenate([p.image_index + o for p, o in zip(parts, offsets,
                                                                      strict=False)]),
        image_sizes=np.concatenate([p.image_sizes for p in parts]),
    ), classes


def sample_images(gt: GroundTruthBoxes, max_images: int | None, seed: int = 0) -> GroundTruthBoxes:
    """The boxes of at most ``max_images`` images, picked at random with ``seed``."""
    count = len(gt.image_sizes)
    if max_images is None or count <= max_images:
        return gt
    chosen = np.sort(np.random.default_rng(seed).choice(count, size=max_images, replace=False))
    new_index = np.full(count, -1)
    new_index[chosen] = np.arange(max_images)
    keep = new_index[gt.image_index] >= 0
    return GroundTruthBoxes(gt.boxes[keep], gt.classes[keep], new_index[gt.image_index[keep]],
                            gt.image_sizes[chosen])


@dataclass
class AnchorAnalysis:
    """Coverage today and with the suggested change, box by box (see :mod:`.coverage`)."""

    cfg: CfgNode
    dataset_names: list[str]
    thing_classes: list[str]
    num_images: int
    num_boxes: int
    boxes: GroundTruthBoxes
    today: BoxCoverage
    suggestion: AnchorSuggestion
    suggested: BoxCoverage | None

    @property
    def suggested_cfg(self) -> CfgNode:
        s = self.suggestion
        return candidate_config(self.cfg, s.sizes, s.aspect_ratios, s.input_scale)

    def report(self) -> str:
        """The tables, the scores and the config lines to paste."""
        cfg, s = self.cfg, self.suggestion
        generator = cfg.MODEL.ANCHOR_GENERATOR
        lines = [
            f"Anchor coverage of {', '.join(self.dataset_names)}: {self.num_images} images, "
            f"{self.num_boxes} boxes (crowd regions left out), at the training resize "
            f"(shorter edge {_sizes_text(cfg)}, longer at most {cfg.INPUT.MAX_SIZE_TRAIN}).",
            f"Anchors today: SIZES {list_text(per_level(generator.SIZES))}, ASPECT_RATIOS "
            f"{list_text(per_level(generator.ASPECT_RATIOS))}; "
            f"foreground IoU >= {self.today.foreground_threshold:g}; low-quality matches "
            f"{'on' if cfg.MODEL.RETINANET_EXT.ALLOW_LOW_QUALITY_MATCHES else 'off'}.",
            "Columns: best>=: boxes whose best anchor reaches the foreground IoU; no fg: boxes "
            "left with no anchor at that IoU (after each anchor goes to the box it overlaps "
            "most); low-q: of those, boxes trained only on low-quality matches; fg/box: "
            "anchors training assigns per box. Sizes: sqrt(area) < 32, 32-96, > 96 px at "
            "today's input size.",
        ]
        today_rows = coverage_rows(self.today, self.thing_classes)
        suggested_rows = None
        if self.suggested is not None:
            suggested_rows = coverage_rows(self.suggested, self.thing_classes)
        lines.append(coverage_table(today_rows, suggested_rows, self.today.foreground_threshold))
        lines.append(f"Mean over classes of 'best>=': today {100 * s.score_today:.1f}%, "
                     f"suggested {100 * s.score:.1f}%.")
        lines += [f"Note: {note}." for note in s.notes]
        assigner = cfg.MODEL.RETINANET_EXT.ASSIGNER
        if assigner != "IoUAssigner":
            lines.append(f"Note: MODEL.RETINANET_EXT.ASSIGNER is {assigner}, which picks "
                         "foreground anchors by its own rule; these numbers are for the IoU "
                         "thresholds.")
        if self.suggested is not None:
            lines += ["Suggested config lines (paste into the YAML):", s.config_lines(cfg),
                      "or on the command line: " + s.command_line(cfg)]
        return "\n".join(lines)


def _sizes_text(cfg: CfgNode) -> str:
    sizes = training_sizes(cfg)
    if len(sizes) == 1:
        return str(sizes[0])
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range":
        how = "uniformly in " + " to ".join(map(str, sizes))
    else:
        how = "one of " + ", ".join(map(str, sizes))
    return f"{how}, drawn per image as training does"


def analyze_anchors(cfg: CfgNode, dataset_names: Sequence[str] | None = None, *,
                    max_images: int | None = None, seed: int = 0) -> AnchorAnalysis:
    """Coverage of the training boxes by today's anchors, a suggested change, and its coverage.

    Args:
        cfg: the config (its model, anchors, matcher and training resize are used).
        dataset_names: default ``cfg.DATASETS.TRAIN``.
        max_images: analyse at most this many images, picked at random with ``seed``.
    """
    names = list(dataset_names if dataset_names is not None else cfg.DATASETS.TRAIN)
    all_boxes, classes = training_boxes(names)
    gt = sample_images(all_boxes, max_images, seed)
    with one_thread():
        shapes = feature_shapes(cfg)
        today = coverage_at_training_resize(gt, cfg, build_anchor_layout(cfg, shapes))
        suggestion = suggest_anchors(gt, cfg, shapes, len(classes))
        suggested = None
        if suggestion.score > suggestion.score_today:
            new_cfg = candidate_config(cfg, suggestion.sizes, suggestion.aspect_ratios, 1.0)
            suggested = coverage_at_training_resize(
                gt, new_cfg, build_anchor_layout(new_cfg, shapes),
                input_scale=suggestion.input_scale)
            suggested.sizes = today.sizes  # size buckets at today's input size, to compare
    return AnchorAnalysis(cfg=cfg, dataset_names=names, thing_classes=classes,
                          num_images=len(gt.image_sizes), num_boxes=len(gt), boxes=gt,
                          today=today, suggestion=suggestion, suggested=suggested)


def resolve_anchors_from_data(cfg: CfgNode) -> AnchorSuggestion | None:
    """Where ``MODEL.RETINANET_EXT.ANCHORS_FROM_DATA`` is set: the suggested anchors (and input
    size) for ``DATASETS.TRAIN`` written into ``cfg`` (not frozen), and the flag cleared, so
    the config saved with the run holds the anchors the model was built with. Deterministic:
    the same data and config give the same anchors.

    Returns:
        The suggestion applied, or None when the flag is not set.
    """
    if not cfg.MODEL.RETINANET_EXT.ANCHORS_FROM_DATA:
        return None
    if not cfg.DATASETS.TRAIN:
        raise ValueError(
            "MODEL.RETINANET_EXT.ANCHORS_FROM_DATA needs DATASETS.TRAIN (the anchors are "
            "chosen from the training boxes)."
        )
    suggestion = analyze_anchors(cfg, max_images=1000).suggestion
    cfg.merge_from_list(suggestion.overrides(cfg))
    cfg.MODEL.RETINANET_EXT.ANCHORS_FROM_DATA = False
    return suggestion


def warn_if_poor_anchor_coverage(
    cfg: CfgNode, dataset_names: Sequence[str] | None = None, *,
    max_share: float = POOR_COVERAGE, max_images: int | None = 1000,
) -> dict[str, float]:
    """Log a warning for each class with more than ``max_share`` of its training boxes
    without a foreground anchor (no anchor reaches the foreground IoU), pointing at
    ``retinanet-ext analyze-anchors``. Takes about a second (vectorised). Nothing is
    checked when ``MODEL.RETINANET_EXT.ASSIGNER`` is not the IoU one.

    Returns:
        Class name -> share without a foreground anchor, for the classes warned about.
    """
    if cfg.MODEL.RETINANET_EXT.ASSIGNER != "IoUAssigner":
        return {}  # another assigner (ATSS) picks foreground anchors by its own rule
    names = list(dataset_names if dataset_names is not None else cfg.DATASETS.TRAIN)
    gt, classes = training_boxes(names)
    gt = sample_images(gt, max_images)
    with one_thread():
        layout = build_anchor_layout(cfg)
        best = best_iou(training_resize(gt, cfg), layout)
    shares = share_without_anchor(best, gt.classes, layout.foreground_threshold, classes)
    poor = {name: share for name, share in shares.items() if share > max_share}
    for name, share in poor.items():
        logger.warning(
            "Anchor coverage: %.0f%% of the '%s' boxes in %s have no anchor at IoU >= %g at "
            "this input size; training will hardly learn them. Run `retinanet-ext "
            "analyze-anchors --config-file CONFIG` (same --dataset and overrides) for anchor "
            "sizes, ratios or an input size that fit.",
            100 * share, name, ", ".join(names), layout.foreground_threshold)
    return poor
