"""The paper's focal-loss figures (analysis/focal.py, ``retinanet-ext plot-focal``): figure 1's
numbers against hand-computed values, figure 4's CDF on hand-made cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, pairwise_iou

import retinanet_ext  # noqa: F401  (registers the components)
from retinanet_ext.analysis.focal import (
    anchor_focal_losses,
    focal_loss_curves,
    focal_loss_of_probability,
    normalized_loss_cdf,
)
from retinanet_ext_cli import main
from tests._tiny_training import QUICK_CONFIG, TINY_OPTS, synthetic_dataset, tiny_cfg


def test_figure1_worked_values() -> None:
    p_t = torch.tensor([0.1, 0.9])
    # Spec, alpha 0.25, gamma 2: 0.25 * 0.9^2 * ln(10) = 0.466; 0.25 * 0.1^2 * ln(1/0.9) = 0.000263.
    alpha_balanced = focal_loss_of_probability(p_t, gamma=2.0, alpha=0.25)
    assert alpha_balanced.tolist() == pytest.approx([0.4662, 0.000263], rel=2e-3)
    # Gamma 0 is cross-entropy, -ln(p_t).
    ce = focal_loss_of_probability(torch.tensor([0.1, 0.5, 0.9]), gamma=0.0)
    assert ce.tolist() == pytest.approx([math.log(10), math.log(2), -math.log(0.9)], rel=1e-5)
    # Paper, Sec. 3.2: with gamma 2, 100x less loss at p_t = 0.9, ~1000x at 0.968 (1/0.032^2).
    ratios = (focal_loss_of_probability(torch.tensor([0.9, 0.968]), 0.0)
              / focal_loss_of_probability(torch.tensor([0.9, 0.968]), 2.0))
    assert ratios.tolist() == pytest.approx([100.0, 976.5625], rel=1e-3)


def test_figure1_curves_cover_the_paper_gammas() -> None:
    curves = focal_loss_curves(num_points=5)
    assert curves["gammas"] == [0.0, 0.5, 1.0, 2.0, 5.0]
    assert curves["p_t"][0] == pytest.approx(0.002) and curves["p_t"][-1] == pytest.approx(0.998)
    gamma5_at_half = curves["loss"][4][2]  # p_t = 0.5: 0.5^5 * ln 2
    assert gamma5_at_half == pytest.approx(0.5 ** 5 * math.log(2), rel=1e-5)


def test_cdf_by_hand() -> None:
    # Losses 3 and 1: sorted 1, 3 of total 4 -> (0, 0), (1/2, 1/4), (1, 1), joined by lines.
    fraction, cumulative = normalized_loss_cdf(torch.tensor([3.0, 1.0]), num_points=5)
    assert fraction.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert cumulative.tolist() == pytest.approx([0.0, 0.125, 0.25, 0.625, 1.0])
    _, equal = normalized_loss_cdf(np.ones(10), num_points=3)
    assert equal.tolist() == pytest.approx([0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="positive sum"):
        normalized_loss_cdf(np.zeros(3))


def test_anchor_losses_on_a_model_predicting_the_prior(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, "unused_train", "unused_val")
    model = build_model(cfg).eval()
    with torch.no_grad():  # every logit becomes the prior bias: p = 0.01 for each class
        model.head.cls_score.weight.zero_()
    num_classes = model.num_classes
    gt = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[8.0, 8.0, 40.0, 40.0]])),
                   gt_classes=torch.tensor([1]))
    batch = [{"image": torch.zeros(3, 64, 64), "instances": gt}]
    losses = anchor_focal_losses(model, [batch], gammas=(0.0, 2.0))

    # Anchors by hand: IoU >= 0.5 or the box's best anchor are foreground, < 0.4 background.
    features = model.backbone(model.preprocess_image(batch).tensor)
    anchors = Boxes.cat(model.anchor_generator([features[f] for f in model.head_in_features]))
    iou = pairwise_iou(anchors, gt.gt_boxes)[:, 0]
    foreground = (iou >= 0.5) | (iou == iou.max())
    assert losses.counts() == (int(foreground.sum()), int(((iou < 0.4) & ~foreground).sum()))

    negative = -math.log(1 - 0.01)  # one class's loss where the target is 0, gamma 0
    for gamma in (0.0, 2.0):
        modulation_neg, modulation_pos = 0.01 ** gamma, 0.99 ** gamma
        want_bg = num_classes * modulation_neg * negative
        want_fg = modulation_pos * math.log(100) + (num_classes - 1) * modulation_neg * negative
        assert losses.concatenated("background", gamma).tolist() == pytest.approx(
            [want_bg] * losses.counts()[1], rel=1e-4)
        assert losses.concatenated("foreground", gamma).tolist() == pytest.approx(
            [want_fg] * losses.counts()[0], rel=1e-4)
    # Equal losses: the CDF over background anchors is the diagonal.
    _, cdf = normalized_loss_cdf(losses.concatenated("background", 2.0), num_points=5)
    assert cdf.tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0], abs=1e-6)


def test_plot_focal_figure1_only(tmp_path: Path, capsys) -> None:
    out = tmp_path / "focal"
    assert main(["plot-focal", "--output", str(out)]) == 0
    assert (out / "focal_loss_vs_probability.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "focal_loss_cdf.png").exists()
    numbers = json.loads((out / "focal_loss.json").read_text())
    assert numbers["figure4"] is None
    assert numbers["figure1"]["worked_values"]["p_t=0.9"]["ratio"] == pytest.approx(100, rel=1e-3)
    assert "focal_loss_vs_probability.png" in capsys.readouterr().out


def test_plot_focal_with_a_checkpoint(tmp_path: Path, new_name) -> None:
    info = synthetic_dataset(tmp_path / "data", num_train=2, num_val=3)
    val = info["splits"]["val"]
    name = new_name("val")
    cfg = tiny_cfg(tmp_path, name, name)
    checkpoint = tmp_path / "model.pth"
    torch.save({"model": build_model(cfg).state_dict()}, checkpoint)
    out = tmp_path / "focal"
    code = main(["plot-focal", "--output", str(out), "--dataset",
                 f"{name}=coco:{val['json_file']}:{val['image_root']}", "--gammas", "0,2",
                 "--config-file", QUICK_CONFIG, *TINY_OPTS, "DATASETS.TEST", f"('{name}',)",
                 "MODEL.WEIGHTS", str(checkpoint)])
    assert code == 0
    assert (out / "focal_loss_cdf.png").read_bytes()[:4] == b"\x89PNG"
    figure4 = json.loads((out / "focal_loss.json").read_text())["figure4"]
    assert figure4["images"] == 3 and figure4["gammas"] == [0.0, 2.0]
    for group in ("foreground", "background"):
        assert figure4[group]["count"] > 0
        assert set(figure4[group]["cumulative"]) == {"0", "2"}
        assert figure4[group]["cumulative"]["2"][-1] == pytest.approx(1.0)


def test_plot_focal_errors(tmp_path: Path, capsys) -> None:
    out = tmp_path / "focal"
    assert main(["plot-focal", "--output", str(out), "--config-file", QUICK_CONFIG,
                 *TINY_OPTS]) == 2
    assert "figure 4 needs a trained model" in capsys.readouterr().err
    assert main(["plot-focal", "--output", str(out), "--gammas", "0,two"]) == 2
    assert "--gammas must be numbers" in capsys.readouterr().err
    assert main(["plot-focal", "--output", str(out), "MODEL.WEIGHTS", "x.pth"]) == 2
    assert "give --config-file" in capsys.readouterr().err
    assert not out.exists()
