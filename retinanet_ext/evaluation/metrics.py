"""Named metrics from a :class:`~retinanet_ext.evaluation.backends.BoxEvaluation`.

The numbers are Detectron2's ``COCOEvaluator``'s: percentages, NaN where COCO gives -1
(undefined: no ground truth of that kind), per-class AP as the mean of the precision
array over IoU 0.5:0.95 and recall thresholds (Detectron's formula), plus per-class AP50.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from retinanet_ext.evaluation.backends import BoxEvaluation

__all__ = ["SUMMARY_METRICS", "class_indices", "per_class_metrics", "summary_metrics",
           "undefined_metric_notes"]

SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_AREA_WORDS = {  # COCO's area ranges, in px² (pycocotools Params.areaRng)
    "APs": "small (area < 32²)",
    "APm": "medium (32² <= area < 96²)",
    "APl": "large (area >= 96²)",
}


def summary_metrics(evaluation: BoxEvaluation) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl in percent; NaN where COCO reports -1."""
    return {name: _percent(evaluation.stats[i]) for i, name in enumerate(SUMMARY_METRICS)}


def class_indices(evaluation: BoxEvaluation, category_ids: Sequence[int]) -> list[int]:
    """For each class (given by its dataset category id), its index K in the precision array.

    Raises:
        ValueError: a category id is not among the ground truth's categories.
    """
    position = {cat: k for k, cat in enumerate(evaluation.category_ids)}
    missing = [cat for cat in category_ids if cat not in position]
    if missing:
        raise ValueError(
            f"category ids {missing} of the dataset's classes are not in its COCO ground "
            f"truth, which has {evaluation.category_ids}"
        )
    return [position[cat] for cat in category_ids]


def per_class_metrics(evaluation: BoxEvaluation, class_names: Sequence[str],
                      category_ids: Sequence[int]) -> dict[str, float]:
    """``AP-<class>`` (IoU 0.5:0.95) and ``AP50-<class>`` in percent, all areas, 100 detections.

    NaN for a class with no (non-crowd) ground truth.
    """
    # precision: [T, R, K, A, M]; area index 0 = all, max-detections index -1 = 100.
    precision = evaluation.precision[:, :, :, 0, -1]
    iou50 = int(np.argmin(np.abs(evaluation.iou_thresholds - 0.5)))
    results: dict[str, float] = {}
    indices = class_indices(evaluation, category_ids)
    for name, k in zip(class_names, indices, strict=True):
        results[f"AP-{name}"] = _mean_percent(precision[:, :, k])
    for name, k in zip(class_names, indices, strict=True):
        results[f"AP50-{name}"] = _mean_percent(precision[iou50, :, k])
    return results


def undefined_metric_notes(results: dict[str, float], class_names: Sequence[str]) -> list[str]:
    """One sentence for each NaN in ``results`` saying why it is undefined."""
    notes = []
    for name in ("AP", "AP50", "AP75"):
        if math.isnan(results.get(name, 0.0)):
            notes.append(f"{name} is NaN: the ground truth has no (non-crowd) object at all")
    for name, words in _AREA_WORDS.items():
        if math.isnan(results.get(name, 0.0)):
            notes.append(f"{name} is NaN (undefined, not 0): the ground truth has no "
                         f"non-crowd object of size {words}")
    empty = [n for n in class_names if math.isnan(results.get(f"AP-{n}", 0.0))]
    if empty:
        named = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        notes.append(f"AP-<class> and AP50-<class> are NaN for {len(empty)} of "
                     f"{len(class_names)} classes ({named}): no non-crowd ground-truth object "
                     "of that class")
    return notes


def _percent(value: float) -> float:
    return float(value * 100) if value >= 0 else float("nan")


def _mean_percent(precision: np.ndarray) -> float:
    valid = precision[precision > -1]
    return float(np.mean(valid) * 100) if valid.size else float("nan")
