"""A look at the data before training: how well the model's anchors fit the training boxes.

``analyze_anchors(cfg)`` measures, per class and object size, how many training boxes get
a foreground anchor from the model's own anchor generator and matcher, and suggests
anchor sizes, aspect ratios (and an input size) that cover more;
``warn_if_poor_anchor_coverage(cfg)`` is the quick check ``train_net.py`` runs at start.
From the command line: ``retinanet-ext analyze-anchors --config-file CONFIG``.
"""

from retinanet_ext.analysis.anchors import (
    AnchorAnalysis,
    analyze_anchors,
    resolve_anchors_from_data,
    sample_images,
    training_boxes,
    warn_if_poor_anchor_coverage,
)
from retinanet_ext.analysis.coverage import (
    SIZE_BUCKETS,
    AnchorLayout,
    BoxCoverage,
    best_iou,
    box_coverage,
    build_anchor_layout,
    feature_shapes,
)
from retinanet_ext.analysis.report import CoverageRow, coverage_rows
from retinanet_ext.analysis.suggest import AnchorSuggestion, suggest_anchors

__all__ = [
    "SIZE_BUCKETS",
    "AnchorAnalysis",
    "AnchorLayout",
    "AnchorSuggestion",
    "BoxCoverage",
    "CoverageRow",
    "analyze_anchors",
    "resolve_anchors_from_data",
    "best_iou",
    "box_coverage",
    "build_anchor_layout",
    "coverage_rows",
    "feature_shapes",
    "sample_images",
    "suggest_anchors",
    "training_boxes",
    "warn_if_poor_anchor_coverage",
]
