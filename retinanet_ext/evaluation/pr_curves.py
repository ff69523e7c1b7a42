"""Per-class precision-recall curves from COCO's precision array, as JSON and PNG.

Two IoU settings, one figure each: IoU 0.5 (the curve whose area is AP50) and the mean
over IoU 0.5:0.95 (whose area is COCO's AP). Points are COCO's own: precision at the 101
recall thresholds 0, 0.01, ..., 1 (interpolated: the best precision at that recall or
beyond; 0 beyond the highest recall reached), all object sizes, 100 detections per image.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from retinanet_ext.evaluation.backends import BoxEvaluation
from retinanet_ext.evaluation.metrics import class_indices

__all__ = ["IOU_SETTINGS", "pr_curve_data", "plot_pr_curves", "write_pr_curves"]

# name in the JSON -> (file name part, title)
IOU_SETTINGS = {
    "0.50": ("iou50", "IoU 0.5"),
    "0.50:0.95": ("iou50-95", "mean over IoU 0.5:0.95"),
}
_MAX_CLASSES_ON_ONE_AXES = 10  # more lines than this are unreadable: small multiples instead


def pr_curve_data(evaluation: BoxEvaluation, class_names: Sequence[str],
                  category_ids: Sequence[int]) -> dict[str, Any]:
    """The curves as plain lists: ``{"recall": [R], "curves": {setting: {class: [R]}}, "ap":
    {setting: {class: AP in percent}}}``; a class with no ground truth has ``null``."""
    precision = evaluation.precision[:, :, :, 0, -1]  # [T, R, K]
    iou50 = int(np.argmin(np.abs(evaluation.iou_thresholds - 0.5)))
    by_setting = {"0.50": precision[iou50], "0.50:0.95": precision.mean(axis=0)}
    defined = (precision > -1).all(axis=(0, 1))  # [K]: the class has ground truth
    data: dict[str, Any] = {
        "recall": evaluation.recall_thresholds.tolist(),
        "area": "all",
        "max_detections": 100,
        "curves": {},
        "ap": {},
    }
    for setting, curves in by_setting.items():
        data["curves"][setting] = {}
        data["ap"][setting] = {}
        for name, k in zip(class_names, class_indices(evaluation, category_ids), strict=True):
            values = curves[:, k].tolist() if defined[k] else None
            data["curves"][setting][name] = values
            data["ap"][setting][name] = float(np.mean(values) * 100) if values else None
    return data


def write_pr_curves(evaluation: BoxEvaluation, class_names: Sequence[str],
                    category_ids: Sequence[int], output_dir: str) -> list[str]:
    """Write ``pr_curves.json`` and one PNG per IoU setting into ``output_dir``.

    Returns the paths written. Without matplotlib only the JSON is written.
    """
    data = pr_curve_data(evaluation, class_names, category_ids)
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, "pr_curves.json")
    with open(json_path, "w") as f:
        json.dump(data, f)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return [json_path]
    return [json_path] + plot_pr_curves(data, output_dir)


def plot_pr_curves(data: dict[str, Any], output_dir: str) -> list[str]:
    """PNG files ``pr_curves_<iou>.png`` from :func:`pr_curve_data`'s ``data``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for setting, (file_part, title) in IOU_SETTINGS.items():
        curves = data["curves"][setting]
        if len(curves) <= _MAX_CLASSES_ON_ONE_AXES:
            figure = _one_axes(plt, data["recall"], curves, data["ap"][setting])
        else:
            figure = _small_multiples(plt, data["recall"], curves, data["ap"][setting])
        figure.suptitle(f"Precision-recall per class, {title} (all sizes, 100 detections)")
        figure.tight_layout()
        path = os.path.join(output_dir, f"pr_curves_{file_part}.png")
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths.append(path)
    return paths


def _label(name: str, ap: float | None) -> str:
    return f"{name} (no ground truth)" if ap is None else f"{name} (AP {ap:.1f})"


def _style(axis: Any) -> None:
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)


def _one_axes(plt: Any, recall: list[float], curves: dict, aps: dict) -> Any:
    figure, axis = plt.subplots(figsize=(7, 5.5))
    for name, precision in curves.items():
        if precision is not None:
            axis.plot(recall, precision, linewidth=1.5, label=_label(name, aps[name]))
    _style(axis)
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.legend(fontsize="small", loc="lower left")
    return figure


def _small_multiples(plt: Any, recall: list[float], curves: dict, aps: dict) -> Any:
    """One small panel per class, drawn on a single axes (offset curves in a grid): as
    many real subplots are slow for matplotlib to lay out for COCO's 80 classes."""
    columns = math.ceil(math.sqrt(len(curves)))
    rows = math.ceil(len(curves) / columns)
    figure, axis = plt.subplots(figsize=(2.0 * columns, 1.8 * rows + 0.4))
    recall_array = np.asarray(recall)
    size = 0.8  # panel side in grid units; the rest is the gap for the title
    for index, (name, precision) in enumerate(curves.items()):
        left, bottom = index % columns, rows - 1 - index // columns
        axis.add_patch(plt.Rectangle((left, bottom), size, size, fill=False, linewidth=0.6,
                                     edgecolor="grey"))
        half = size / 2  # faint lines at precision 0.5 and recall 0.5, to read values by
        axis.plot([left, left + size], [bottom + half] * 2, color="0.85", linewidth=0.5)
        axis.plot([left + half] * 2, [bottom, bottom + size], color="0.85", linewidth=0.5)
        if precision is not None:
            axis.plot(left + size * recall_array, bottom + size * np.asarray(precision),
                      linewidth=1.0, color="C0")
        axis.text(left + size / 2, bottom + size + 0.03, _label(name, aps[name]),
                  ha="center", va="bottom", fontsize="x-small")
    axis.set_xlim(-0.1, columns)
    axis.set_ylim(-0.1, rows)
    axis.set_axis_off()
    axis.set_title("each panel: recall 0 to 1 (right), precision 0 to 1 (up); grey lines at 0.5",
                   fontsize="small")
    return figure
