"""Training curves from Detectron2's ``metrics.json``, as a PNG (matplotlib, Agg backend).

Detectron2's ``JSONWriter`` appends one JSON object per logging period to
``OUTPUT_DIR/metrics.json`` (``iteration``, ``total_loss``, ``loss_cls``, ``loss_box_reg``,
``lr``, ..., and evaluation results as separate entries). :func:`plot_training_curves`
draws total, classification and box loss and the learning rate against the iteration,
one line per run, so several runs overlay.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

__all__ = ["CURVES", "MetricsError", "plot_training_curves", "read_metrics"]

logger = logging.getLogger(__name__)

#: (metrics.json key, panel title) of each panel.
CURVES = (("total_loss", "total loss"), ("loss_cls", "classification loss (focal)"),
          ("loss_box_reg", "box regression loss"), ("lr", "learning rate"))


class MetricsError(ValueError):
    """A run folder has no readable ``metrics.json``."""


def read_metrics(path: str) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(iteration, value), ...]}`` for each key of :data:`CURVES` in a metrics file.

    ``path`` is a run's OUTPUT_DIR or its ``metrics.json``. Lines that are not JSON (a
    line cut short by a running training) are skipped with a warning.
    """
    file = path if path.endswith(".json") else os.path.join(path, "metrics.json")
    if not os.path.isfile(file):
        raise MetricsError(f"{file} does not exist (train_net.py writes it to OUTPUT_DIR)")
    curves: dict[str, list[tuple[int, float]]] = {key: [] for key, _ in CURVES}
    with open(file) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s, line %d: not JSON, skipped", file, number)
                continue
            if not isinstance(entry, dict) or "iteration" not in entry:
                continue
            for key in curves:
                if isinstance(entry.get(key), int | float):
                    curves[key].append((int(entry["iteration"]), float(entry[key])))
    if not any(curves.values()):
        raise MetricsError(f"{file} holds none of {[key for key, _ in CURVES]}")
    return curves


def plot_training_curves(run_dirs: Sequence[str], output: str,
                         labels: Sequence[str] | None = None) -> str:
    """Draw the :data:`CURVES` of each run (overlaid) into the PNG ``output``; returns it.

    Losses use a log scale when they span more than a factor of 20 (the focal loss falls
    fast, then slowly).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_metrics(path) for path in run_dirs]
    labels = list(labels) if labels else _labels(run_dirs)
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for axis, (key, title) in zip(axes.flat, CURVES, strict=True):
        values = []
        for run, label in zip(runs, labels, strict=True):
            if run[key]:
                iterations, points = zip(*run[key], strict=True)
                axis.plot(iterations, points, label=label, linewidth=1.4)
                values.extend(points)
        axis.set_title(title)
        axis.set_xlabel("iteration")
        axis.grid(alpha=0.3)
        if not values:
            axis.text(0.5, 0.5, f"'{key}' not logged", ha="center", va="center",
                      transform=axis.transAxes, color="grey")
        elif key != "lr" and min(values) > 0 and max(values) / min(values) > 20:
            axis.set_yscale("log")
    if len(runs) > 1:
        axes.flat[0].legend(fontsize="small")
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output


def _labels(run_dirs: Sequence[str]) -> list[str]:
    """Run names: the folder names, with parents added where two are the same."""
    labels = [os.path.basename(os.path.normpath(path)) or path for path in run_dirs]
    if len(set(labels)) < len(labels):
        labels = [os.path.normpath(path) for path in run_dirs]
    return labels
