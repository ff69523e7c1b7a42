"""Training curves from Detectron2's metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retinanet_ext.plots import MetricsError, plot_training_curves, read_metrics


def write_metrics(folder: Path, iterations: int, scale: float = 1.0, cut: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for it in range(19, iterations, 20):
        lines.append(json.dumps({
            "iteration": it, "total_loss": scale * 2.0 / (1 + it / 50),
            "loss_cls": scale * 1.2 / (1 + it / 50), "loss_box_reg": scale * 0.8 / (1 + it / 50),
            "lr": 0.01 * min(1.0, it / 100), "data_time": 0.01}))
    lines.append(json.dumps({"iteration": iterations - 1, "bbox/AP": 12.5}))  # an evaluation
    text = "\n".join(lines) + "\n"
    if cut:
        text += '{"iteration": 999, "total_lo'  # a line cut short by a running training
    (folder / "metrics.json").write_text(text)
    return folder


def test_read_metrics_takes_the_curves_and_skips_a_cut_line(tmp_path: Path) -> None:
    run = write_metrics(tmp_path / "run", 200, cut=True)
    curves = read_metrics(str(run))
    assert [it for it, _ in curves["total_loss"]] == list(range(19, 200, 20))
    assert curves["lr"][-1] == (199, 0.01) and curves["lr"][0] == (19, pytest.approx(0.0019))
    assert len(curves["loss_cls"]) == len(curves["loss_box_reg"]) == 10
    assert read_metrics(str(run / "metrics.json")) == curves


def test_plot_overlays_runs_into_a_png(tmp_path: Path) -> None:
    from PIL import Image

    runs = [write_metrics(tmp_path / "a", 200), write_metrics(tmp_path / "b", 300, 1.5)]
    out = plot_training_curves([str(r) for r in runs], str(tmp_path / "curves.png"))
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[0] > 500 and image.shape[1] > 800
    # Two runs: matplotlib's first two colours (blue, orange) both appear.
    assert (np.abs(image.astype(int) - [31, 119, 180]).sum(axis=2) < 30).sum() > 200
    assert (np.abs(image.astype(int) - [255, 127, 14]).sum(axis=2) < 30).sum() > 200


def test_missing_or_empty_metrics_are_errors(tmp_path: Path) -> None:
    with pytest.raises(MetricsError, match="does not exist"):
        read_metrics(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.json").write_text('{"iteration": 1, "bbox/AP": 3}\n')
    with pytest.raises(MetricsError, match="holds none of"):
        read_metrics(str(tmp_path / "empty"))
