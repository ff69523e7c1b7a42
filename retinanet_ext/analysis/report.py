"""Per-class, per-size summaries of :class:`~.coverage.BoxCoverage`, and their table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retinanet_ext.analysis.coverage import SIZE_BUCKETS, BoxCoverage

__all__ = ["CoverageRow", "coverage_rows", "coverage_table", "share_without_anchor"]


@dataclass(frozen=True)
class CoverageRow:
    """One class and size bucket (``"all"``: every size).

    Attributes:
        covered: share of boxes whose best anchor reaches the foreground IoU.
        no_foreground: share of boxes left with no anchor at that IoU once each anchor
            goes to the box it overlaps most.
        low_quality_only: share of boxes whose only foreground anchors are low-quality
            matches (part of ``no_foreground``; 0 when those are off).
        foreground_per_box: mean number of anchors training assigns to a box.
    """

    class_name: str
    bucket: str
    boxes: int
    covered: float
    no_foreground: float
    low_quality_only: float
    foreground_per_box: float


def _row(class_name: str, bucket: str, coverage: BoxCoverage, mask: np.ndarray) -> CoverageRow:
    count = int(mask.sum())
    if count == 0:
        return CoverageRow(class_name, bucket, 0, float("nan"), float("nan"), float("nan"),
                           float("nan"))
    no_foreground = coverage.foreground[mask] == 0
    return CoverageRow(
        class_name=class_name,
        bucket=bucket,
        boxes=count,
        covered=float((coverage.best_iou[mask] >= coverage.foreground_threshold).mean()),
        no_foreground=float(no_foreground.mean()),
        low_quality_only=float((no_foreground & (coverage.foreground_training[mask] > 0)).mean()),
        foreground_per_box=float(coverage.foreground_training[mask].mean()),
    )


def coverage_rows(coverage: BoxCoverage, thing_classes: Sequence[str]) -> list[CoverageRow]:
    """For each class with boxes: one row per non-empty size bucket, then ``"all"``."""
    rows = []
    for class_id, class_name in enumerate(thing_classes):
        of_class = coverage.classes == class_id
        if not of_class.any():
            continue
        for bucket, low, high in SIZE_BUCKETS:
            in_bucket = of_class & (coverage.sizes >= low) & (coverage.sizes < high)
            if in_bucket.any():
                rows.append(_row(class_name, bucket, coverage, in_bucket))
        rows.append(_row(class_name, "all", coverage, of_class))
    return rows


def share_without_anchor(best_iou: np.ndarray, classes: np.ndarray, threshold: float,
                         thing_classes: Sequence[str]) -> dict[str, float]:
    """Class name -> share of its boxes whose best anchor IoU is below ``threshold``."""
    shares = {}
    for class_id, class_name in enumerate(thing_classes):
        of_class = classes == class_id
        if of_class.any():
            shares[class_name] = float((best_iou[of_class] < threshold).mean())
    return shares


def _percent(value: float) -> str:
    return "-" if value != value else f"{100 * value:.1f}%"


def coverage_table(today: Sequence[CoverageRow], suggested: Sequence[CoverageRow] | None = None,
                   threshold: float = 0.5) -> str:
    """Plain-text table of ``today``'s rows, with the suggestion's beside them if given."""
    name_width = max([len("class")] + [len(r.class_name) for r in today])
    columns = (f"{'best>=' + format(threshold, 'g'):>9} {'no fg':>7} {'low-q':>7} "
               f"{'fg/box':>6}")
    header = f"  {'class':<{name_width}}  {'size':<6} {'boxes':>6}  {columns}"
    if suggested is not None:
        header += f"  |  suggested: {columns}"
    lines = [header]
    for index, row in enumerate(today):
        line = (f"  {row.class_name:<{name_width}}  {row.bucket:<6} {row.boxes:>6}  "
                f"{_percent(row.covered):>9} {_percent(row.no_foreground):>7} "
                f"{_percent(row.low_quality_only):>7} {row.foreground_per_box:>6.1f}")
        if suggested is not None:
            other = suggested[index]
            line += (f"  |  {'':>11}{_percent(other.covered):>9} "
                     f"{_percent(other.no_foreground):>7} {_percent(other.low_quality_only):>7} "
                     f"{other.foreground_per_box:>6.1f}")
        lines.append(line)
    return "\n".join(lines)
