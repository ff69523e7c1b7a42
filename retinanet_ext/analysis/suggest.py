"""Anchor sizes, aspect ratios and, where objects are too small for P3, an input size that
cover more of the training boxes.

The search keeps the config's structure -- the levels, the number of sizes and ratios per
level (the head shares its predictors across levels) and octave scales -- and varies:

* one factor on every ``MODEL.ANCHOR_GENERATOR.SIZES`` value, 2^(k/3) for k = -6..3;
* ``ASPECT_RATIOS``: today's, or as many ratios as today taken at evenly spaced quantiles
  of the boxes' height/width (each class weighted equally, so a rare class counts);
* the input size (``INPUT.MIN/MAX_SIZE_TRAIN/TEST``) x1.5 or x2, only when some class
  still has more than 10 % of its boxes without a foreground anchor: objects smaller
  than about the P3 stride cannot reach IoU 0.5 with any anchor on that grid.

Each candidate is scored by the mean over classes of the share of boxes whose best anchor
reaches the foreground IoU (:func:`.coverage.best_iou`, vectorised over all boxes); the
smallest change wins ties. Each candidate's anchors come from the model's anchor
generator, built from the config with the candidate's keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from detectron2.config import CfgNode

from retinanet_ext.analysis.coverage import (
    AnchorLayout,
    FeatureShapes,
    best_iou,
    build_anchor_layout,
    training_resize,
)
from retinanet_ext.data.box_sizes import GroundTruthBoxes

__all__ = [
    "AnchorSuggestion", "candidate_config", "list_text", "mean_class_coverage", "per_level",
    "suggest_anchors",
]

SIZE_FACTORS = tuple(2 ** (k / 3) for k in range(-6, 4))
INPUT_SCALES = (1.5, 2.0)
POOR_COVERAGE = 0.10
"""A class with more than this share of boxes without a foreground anchor is poorly covered."""


@dataclass
class AnchorSuggestion:
    """A config change and the coverage score before and after (mean over classes of the
    share of boxes whose best anchor reaches the foreground IoU)."""

    sizes: list[list[float]]
    aspect_ratios: list[list[float]]
    input_scale: float
    score_today: float
    score: float
    notes: list[str] = field(default_factory=list)

    def overrides(self, cfg: CfgNode) -> list[str]:
        """The change as ``KEY VALUE`` command-line overrides."""
        pairs = [("MODEL.ANCHOR_GENERATOR.SIZES", list_text(self.sizes)),
                 ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", list_text(self.aspect_ratios))]
        if self.input_scale != 1.0:
            for key, value in _scaled_input(cfg, self.input_scale).items():
                pairs.append((f"INPUT.{key}", value if isinstance(value, int) else
                              "(" + ", ".join(str(v) for v in value) + ",)"))
        return [item for key, value in pairs for item in (key, str(value))]

    def summary(self) -> str:
        """One line: the anchors (and input scale) and the coverage before and after."""
        scale = f", input x{self.input_scale:g}" if self.input_scale != 1.0 else ""
        return (f"SIZES {list_text(self.sizes)}, ASPECT_RATIOS {list_text(self.aspect_ratios)}"
                f"{scale}; boxes whose best anchor reaches the foreground IoU, mean over "
                f"classes: {100 * self.score_today:.1f}% -> {100 * self.score:.1f}%")

    def command_line(self, cfg: CfgNode) -> str:
        """:meth:`overrides` quoted for a shell."""
        import shlex

        return " ".join(shlex.quote(item) for item in self.overrides(cfg))

    def config_lines(self, cfg: CfgNode) -> str:
        """The change as YAML to paste into the config file."""
        lines = ["MODEL:", "  ANCHOR_GENERATOR:", f"    SIZES: {list_text(self.sizes)}",
                 f"    ASPECT_RATIOS: {list_text(self.aspect_ratios)}"]
        if self.input_scale != 1.0:
            lines.append("INPUT:")
            for key, value in _scaled_input(cfg, self.input_scale).items():
                text = value if isinstance(value, int) else (
                    "(" + ", ".join(str(v) for v in value) + ",)")
                lines.append(f"  {key}: {text}")
        return "\n".join(lines)


def list_text(values: list[list[float]]) -> str:
    """``[[32.0, 40.32], ...]``: floats as YAML and yacs read them back."""
    return "[" + ", ".join("[" + ", ".join(str(float(round(v, 2))) for v in level) + "]"
                           for level in values) + "]"


def _scaled_input(cfg: CfgNode, scale: float) -> dict[str, int | tuple[int, ...]]:
    return {
        "MIN_SIZE_TRAIN": tuple(round(s * scale) for s in cfg.INPUT.MIN_SIZE_TRAIN),
        "MAX_SIZE_TRAIN": round(cfg.INPUT.MAX_SIZE_TRAIN * scale),
        "MIN_SIZE_TEST": round(cfg.INPUT.MIN_SIZE_TEST * scale),
        "MAX_SIZE_TEST": round(cfg.INPUT.MAX_SIZE_TEST * scale),
    }


def candidate_config(cfg: CfgNode, sizes: list[list[float]], aspect_ratios: list[list[float]],
                     input_scale: float = 1.0) -> CfgNode:
    """A copy of ``cfg`` with these anchor keys and the input size scaled."""
    candidate = cfg.clone()
    candidate.defrost()
    candidate.MODEL.ANCHOR_GENERATOR.SIZES = [list(level) for level in sizes]
    candidate.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [list(level) for level in aspect_ratios]
    for key, value in _scaled_input(cfg, input_scale).items():
        setattr(candidate.INPUT, key, value)
    return candidate


def mean_class_coverage(gt: GroundTruthBoxes, cfg: CfgNode, layout: AnchorLayout,
                        num_classes: int) -> tuple[float, np.ndarray]:
    """(mean over classes, per-class array) of the share of boxes whose best anchor reaches
    the foreground IoU, at the training resize of ``cfg``."""
    covered = best_iou(training_resize(gt, cfg), layout) >= layout.foreground_threshold
    per_class = np.array([covered[gt.classes == k].mean() if (gt.classes == k).any() else np.nan
                          for k in range(num_classes)])
    return float(np.nanmean(per_class)), per_class


def _ratio_candidates(gt: GroundTruthBoxes, today: list[list[float]]) -> list[list[list[float]]]:
    """Today's ratios, and as many ratios taken from the boxes' height/width quantiles."""
    count = len(today[0])
    if len(gt) == 0 or any(len(level) != count for level in today):
        return [today]
    counts = np.bincount(gt.classes)
    weights = 1.0 / counts[gt.classes]  # each class weighs the same
    order = np.argsort(gt.aspect_ratios)
    cumulative = np.cumsum(weights[order]) / weights.sum()
    quantiles = [(i + 0.5) / count for i in range(count)]
    picked = [float(gt.aspect_ratios[order][np.searchsorted(cumulative, q)]) for q in quantiles]
    ratios = sorted({round(max(r, 0.05), 2) for r in picked})
    if len(ratios) != count:
        return [today]
    return [today, [ratios]]


@dataclass
class _Candidate:
    score: float
    per_class: np.ndarray
    factor: float
    ratio_index: int
    sizes: list[list[float]]
    ratios: list[list[float]]
    input_scale: float

    def preference(self) -> tuple:
        """Higher coverage first; on a tie, the smaller change."""
        return (round(self.score, 4), -abs(math.log(self.factor)), -self.ratio_index)


def _search(gt: GroundTruthBoxes, cfg: CfgNode, shapes: FeatureShapes, num_classes: int,
            ratio_options: list[list[list[float]]], input_scale: float) -> _Candidate:
    today_sizes = per_level(cfg.MODEL.ANCHOR_GENERATOR.SIZES)
    best = None
    for ratio_index, ratios in enumerate(ratio_options):
        for factor in SIZE_FACTORS:
            sizes = [[round(v * factor, 2) for v in level] for level in today_sizes]
            candidate = candidate_config(cfg, sizes, ratios, input_scale)
            layout = build_anchor_layout(candidate, shapes)
            score, per_class = mean_class_coverage(gt, candidate, layout, num_classes)
            found = _Candidate(score, per_class, factor, ratio_index, sizes, ratios, input_scale)
            if best is None or found.preference() > best.preference():
                best = found
    return best


def suggest_anchors(gt: GroundTruthBoxes, cfg: CfgNode, shapes: FeatureShapes,
                    num_classes: int) -> AnchorSuggestion:
    """Search the candidates (see the module docstring) for ``gt``, the training boxes at
    their original size; returns the best, which is today's config if nothing beats it."""
    today_sizes = [list(level) for level in per_level(cfg.MODEL.ANCHOR_GENERATOR.SIZES)]
    today_ratios = [list(level) for level in per_level(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS)]
    score_today, per_class_today = mean_class_coverage(
        gt, cfg, build_anchor_layout(cfg, shapes), num_classes)
    ratio_options = _ratio_candidates(gt, today_ratios)
    best = _search(gt, cfg, shapes, num_classes, ratio_options, 1.0)
    notes = []
    if np.nanmin(best.per_class) < 1 - POOR_COVERAGE:
        for input_scale in INPUT_SCALES:
            scaled = _search(gt, cfg, shapes, num_classes, ratio_options, input_scale)
            if scaled.score > best.score + 0.02:  # each step up must be worth its cost
                best = scaled
    if best.input_scale != 1.0:
        notes.append(
            f"objects too small for the finest anchor grid (stride "
            f"{min(int(s.stride) for s in shapes.shapes)} px) at today's input size: the input "
            f"is scaled by {best.input_scale:g} (slower training and inference)")
    if best.score <= score_today + 1e-4:
        best = _Candidate(score_today, per_class_today, 1.0, 0, today_sizes, today_ratios, 1.0)
        notes.append("no candidate covers more boxes than today's anchors")
    return AnchorSuggestion(best.sizes, best.ratios, best.input_scale, score_today, best.score,
                            notes)


def per_level(values: list) -> list:
    """A config's SIZES / ASPECT_RATIOS as one list per level (a flat list is one level)."""
    return [values] if values and not isinstance(values[0], list | tuple) else list(values)
