"""Anchor coverage: exact against the model's own anchors and matcher, a known synthetic
case (12 px objects), the suggestion's config lines, the start-up warning and the command."""

from __future__ import annotations

import logging
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, ImageList, pairwise_iou
from PIL import Image

from retinanet_ext.analysis import (
    analyze_anchors,
    best_iou,
    box_coverage,
    build_anchor_layout,
    warn_if_poor_anchor_coverage,
)
from retinanet_ext.analysis.coverage import _AnchorGrid, training_resize, training_sizes
from retinanet_ext.analysis.suggest import mean_class_coverage
from retinanet_ext.data import register_csv_dataset, validated_boxes
from retinanet_ext.data.box_sizes import resized
from retinanet_ext.engine import Trainer, load_config
from retinanet_ext.modeling.matching import build_anchor_matcher
from retinanet_ext_cli import main as cli_main

QUICK = "configs/retinanet_R18_FPN_quick.yaml"


def _config(*opts: str):
    return load_config(QUICK, ["INPUT.MIN_SIZE_TRAIN", "(320,)", "INPUT.MAX_SIZE_TRAIN", "320",
                               "MODEL.RETINANET.NUM_CLASSES", "2", *opts])


def _synthetic(root: Path, sizes: dict[str, float], images: int = 24, per_image: int = 4,
               image_size: tuple[int, int] = (320, 320), seed: int = 0) -> Path:
    """Square boxes of a fixed side per class, at random positions, on blank images."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(images):
        Image.new("RGB", image_size).save(root / f"im{index}.png")
        for _ in range(per_image):
            for name, side in sizes.items():
                x = rng.uniform(1, image_size[0] - side - 1)
                y = rng.uniform(1, image_size[1] - side - 1)
                rows.append(f"im{index}.png,{x:.3f},{y:.3f},{x + side:.3f},{y + side:.3f},{name}")
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    return root / "boxes.csv"


def _brute_force(gt, cfg):
    """Every anchor of the model (its own anchor generator on its own backbone's features)
    against every box, image by image, with Detectron2's matcher."""
    model = Trainer.build_model(cfg).eval()
    matcher = build_anchor_matcher(cfg)
    threshold = cfg.MODEL.RETINANET.IOU_THRESHOLDS[-1]
    best, foreground, training = (np.zeros(len(gt)) for _ in range(3))
    for image, (height, width) in enumerate(gt.image_sizes.tolist()):
        own = np.nonzero(gt.image_index == image)[0]
        if len(own) == 0:
            continue
        padded = ImageList.from_tensors([torch.zeros(3, height, width)],
                                        model.backbone.size_divisibility).tensor
        with torch.no_grad():
            features = model.backbone(padded)
            anchors = Boxes.cat(model.anchor_generator(
                [features[f] for f in model.head_in_features]))
        iou = pairwise_iou(Boxes(torch.as_tensor(gt.boxes[own], dtype=torch.float32)), anchors)
        best[own] = iou.max(dim=1).values.numpy()
        values, nearest = iou.max(dim=0)
        foreground[own] = torch.bincount(nearest[values >= threshold], minlength=len(own)).numpy()
        matched, labels = matcher(iou)
        training[own] = torch.bincount(matched[labels == 1], minlength=len(own)).numpy()
    return best, foreground, training


@pytest.mark.parametrize("opts", [
    (),
    ("MODEL.RETINANET.IOU_THRESHOLDS", "[0.3, 0.4]",
     "MODEL.RETINANET_EXT.ALLOW_LOW_QUALITY_MATCHES", "False",
     "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[0.25, 1.0, 3.0]]"),
])
def test_coverage_equals_every_anchor_against_every_box(new_name, tmp_path, opts):
    """Dense, overlapping boxes of many sizes on images of several sizes: the restricted,
    vectorised computation gives exactly what all anchors and the matcher give."""
    rng = np.random.default_rng(1)
    rows = []
    for index, size in enumerate([(160, 160), (133, 217), (100, 60)]):
        Image.new("RGB", size).save(tmp_path / f"im{index}.png")
        for _ in range(25):
            w, h = np.exp(rng.uniform(np.log(4), np.log(min(size) * 0.9), 2))
            x, y = rng.uniform(0, size[0] - w), rng.uniform(0, size[1] - h)
            rows.append(f"im{index}.png,{x:.2f},{y:.2f},{x + w:.2f},{y + h:.2f},thing")
    rows.append("im0.png,50,50,90,90,thing")  # two identical boxes: one loses the anchors
    rows.append("im0.png,50,50,90,90,thing")
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    name = register_csv_dataset(new_name(), str(tmp_path / "boxes.csv"))
    cfg = _config("MODEL.RETINANET.NUM_CLASSES", "1", *opts)
    gt = validated_boxes(name)
    layout = build_anchor_layout(cfg)
    coverage = box_coverage(gt, layout)
    best, foreground, training = _brute_force(gt, cfg)
    np.testing.assert_allclose(coverage.best_iou, best, atol=1e-6)
    np.testing.assert_array_equal(coverage.foreground, foreground)
    np.testing.assert_array_equal(coverage.foreground_training, training)
    np.testing.assert_allclose(best_iou(gt, layout), best, atol=1e-6)
    assert foreground.sum() > 0 and (foreground == 0).any()  # both cases are exercised


def test_grids_follow_the_backbone_and_its_padding():
    cfg = _config()
    model = Trainer.build_model(cfg).eval()
    layout = build_anchor_layout(cfg)
    for height, width in [(333, 517), (64, 64), (65, 127)]:
        padded = ImageList.from_tensors([torch.zeros(3, height, width)],
                                        model.backbone.size_divisibility).tensor
        with torch.no_grad():
            features = model.backbone(padded)
        expected = Boxes.cat(model.anchor_generator([features[f] for f in model.head_in_features]))
        assert torch.equal(_AnchorGrid(layout, height, width).all, expected.tensor)


def test_twelve_pixel_objects(new_name, tmp_path):
    """12 px squares on 320 px images: no default anchor (smallest 32 px, IoU <= 0.14) can
    reach IoU 0.5, and with stride 8 no 12 px anchor can either wherever the square sits;
    the suggestion must enlarge the input and shrink the anchors, and cover nearly all."""
    name = register_csv_dataset(new_name(), str(_synthetic(tmp_path, {"dot": 12.0})))
    cfg = _config("MODEL.RETINANET.NUM_CLASSES", "1")
    analysis = analyze_anchors(cfg, [name])
    assert analysis.num_boxes == 96
    assert (analysis.today.best_iou < 0.15).all()
    assert (analysis.today.foreground == 0).all()
    assert (analysis.today.foreground_training > 0).all()  # low-quality matches only
    suggestion = analysis.suggestion
    assert suggestion.score_today == 0.0
    assert suggestion.score >= 0.95
    assert suggestion.input_scale > 1.0
    assert (analysis.suggested.foreground > 0).mean() >= 0.95
    report = analysis.report()
    assert "dot    small      96       0.0%  100.0%  100.0%" in report
    assert "Note: objects too small for the finest anchor grid (stride 8 px)" in report
    # the printed overrides give that coverage when applied
    applied = load_config(QUICK, [*_config_opts(), "MODEL.RETINANET.NUM_CLASSES", "1",
                                  *suggestion.overrides(cfg)])
    score, _ = mean_class_coverage(analysis.boxes, applied, build_anchor_layout(applied), 1)
    assert score == pytest.approx(suggestion.score, abs=1e-9)
    command = report.split("or on the command line: ")[1]
    assert shlex.split(command) == suggestion.overrides(cfg)


def _config_opts() -> list[str]:
    return ["INPUT.MIN_SIZE_TRAIN", "(320,)", "INPUT.MAX_SIZE_TRAIN", "320"]


def test_well_covered_data_gets_no_change(new_name, tmp_path):
    name = register_csv_dataset(new_name(), str(_synthetic(tmp_path, {"square": 64.0},
                                                           images=6)))
    analysis = analyze_anchors(_config("MODEL.RETINANET.NUM_CLASSES", "1"), [name])
    assert analysis.suggestion.score_today == 1.0
    assert analysis.suggested is None
    assert "no candidate covers more boxes than today's anchors" in analysis.report()


def test_training_resize_draws_sizes_as_training_does():
    gt = validated_boxes_like(images=600)
    cfg = _config("INPUT.MIN_SIZE_TRAIN", "(160, 200, 240)", "INPUT.MAX_SIZE_TRAIN", "1000")
    assert training_sizes(cfg) == [160, 200, 240]
    edges = training_resize(gt, cfg).image_sizes[:, 0]
    assert set(edges.tolist()) == {160, 200, 240}
    assert min(np.bincount(edges)[[160, 200, 240]]) > 150  # about a third each
    assert np.array_equal(training_resize(gt, cfg).image_sizes[:, 0], edges)  # seeded
    # the same draws for a scaled input, so that two configs compare box by box
    assert np.array_equal(training_resize(gt, cfg, input_scale=2.0).image_sizes[:, 0],
                          2 * edges)
    cfg = _config("INPUT.MIN_SIZE_TRAIN", "(160, 240)", "INPUT.MIN_SIZE_TRAIN_SAMPLING", "range",
                  "INPUT.MAX_SIZE_TRAIN", "1000")
    edges = training_resize(gt, cfg).image_sizes[:, 0]
    assert edges.min() >= 160 and edges.max() <= 240 and len(set(edges.tolist())) > 40
    resized_gt = resized(gt, 160, 1000)
    assert resized_gt.image_sizes[0].tolist() == [160, 320]
    assert resized_gt.boxes[0].tolist() == [5.0, 5.0, 15.0, 25.0]


def validated_boxes_like(images: int = 1):
    """One 20x40 box on each of ``images`` 640x320 images."""
    from retinanet_ext.data.box_sizes import GroundTruthBoxes

    return GroundTruthBoxes(np.tile([[10.0, 10.0, 30.0, 50.0]], (images, 1)),
                            np.zeros(images, dtype=np.int64), np.arange(images),
                            np.tile([[320, 640]], (images, 1)))


def test_warning_names_the_poorly_covered_class(new_name, tmp_path, caplog):
    name = register_csv_dataset(new_name(), str(_synthetic(tmp_path, {"dot": 12.0,
                                                                      "square": 64.0})))
    cfg = _config("DATASETS.TRAIN", f"('{name}',)")
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.analysis"):
        poor = warn_if_poor_anchor_coverage(cfg)
    assert poor == {"dot": 1.0}
    messages = [r.getMessage() for r in caplog.records if r.name == "retinanet_ext.analysis"]
    assert len(messages) == 1
    atss = _config("DATASETS.TRAIN", f"('{name}',)", "MODEL.RETINANET_EXT.ASSIGNER", "ATSSAssigner")
    assert warn_if_poor_anchor_coverage(atss) == {}  # ATSS picks foreground its own way
    assert "100% of the 'dot' boxes" in messages[0]
    assert "retinanet-ext analyze-anchors" in messages[0]


def test_train_net_warns_at_start(new_name, tmp_path, monkeypatch):
    import train_net

    name = register_csv_dataset(new_name(), str(_synthetic(tmp_path, {"dot": 12.0}, images=2)))

    class NoTraining:
        def __init__(self, cfg):
            pass

        def resume_or_load(self, resume):
            pass

        def train(self):
            return {}

    monkeypatch.setattr(train_net, "Trainer", NoTraining)
    args = train_net.build_parser().parse_args(
        ["--config-file", QUICK, *_config_opts(), "DATASETS.TRAIN", f"('{name}',)",
         "DATASETS.TEST", "()", "MODEL.RETINANET.NUM_CLASSES", "1",
         "OUTPUT_DIR", str(tmp_path / "out")])
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # train_net's logger set-up stops propagation to caplog
    logging.getLogger("retinanet_ext.analysis").addHandler(handler)
    try:
        train_net.main(args)
    finally:
        logging.getLogger("retinanet_ext.analysis").removeHandler(handler)
    assert any("'dot' boxes" in r.getMessage() for r in records)


@pytest.mark.slow
def test_analyze_anchors_command(new_name, tmp_path, capsys):
    csv_file = _synthetic(tmp_path, {"dot": 12.0}, images=4)
    spec = f"{new_name()}=csv:{csv_file}"
    status = cli_main(["analyze-anchors", "--config-file", QUICK, "--dataset", spec,
                       "--output", str(tmp_path / "plots" / "anchors.png"), *_config_opts(),
                       "MODEL.RETINANET.NUM_CLASSES", "1"])
    out = capsys.readouterr().out
    assert status == 0
    assert "Anchor coverage of" in out and "Suggested config lines" in out
    assert Image.open(tmp_path / "plots" / "anchors.png").size[0] > 500
    status = cli_main(["analyze-anchors", "--config-file", QUICK, "--dataset", "bad-spec"])
    assert status == 2
    assert "error: Malformed dataset spec 'bad-spec'" in capsys.readouterr().err


@pytest.mark.slow
def test_bccd_coverage(new_name, datasets_root, capsys):
    """docs/data.md's command on the shared BCCD set: platelets (median 26 px at 320 px input)
    are the class the default anchors miss; the suggestion covers them."""
    spec = f"{new_name()}=voc:{datasets_root / 'bccd' / 'BCCD'}:train"
    assert cli_main(["analyze-anchors", "--config-file", QUICK, "--dataset", spec]) == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:2]): line for line in out.splitlines() if line.startswith("  ")}
    platelets = rows[("Platelets", "all")].split()
    today, suggested = float(platelets[3].rstrip("%")), float(platelets[8].rstrip("%"))
    assert today < 90 < suggested
    assert math.isclose(float(rows[("RBC", "all")].split()[3].rstrip("%")), 100.0)


def test_anchors_from_data_are_resolved_at_start_and_saved(new_name, tmp_path, monkeypatch):
    import train_net

    name = register_csv_dataset(new_name(), str(_synthetic(tmp_path, {"dot": 12.0}, images=4)))
    built = {}

    class NoTraining:
        def __init__(self, cfg):
            built["cfg"] = cfg

        def resume_or_load(self, resume):
            pass

        def train(self):
            return {}

    monkeypatch.setattr(train_net, "Trainer", NoTraining)
    opts = [*_config_opts(), "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()",
            "MODEL.RETINANET.NUM_CLASSES", "1", "OUTPUT_DIR", str(tmp_path / "out")]
    train_net.main(train_net.build_parser().parse_args(
        ["--config-file", QUICK, *opts, "MODEL.RETINANET_EXT.ANCHORS_FROM_DATA", "True"]))
    cfg = built["cfg"]
    expected = analyze_anchors(_config("MODEL.RETINANET.NUM_CLASSES", "1"), [name]).suggestion
    assert cfg.MODEL.RETINANET_EXT.ANCHORS_FROM_DATA is False  # resolved, so buildable
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == expected.sizes
    assert cfg.INPUT.MIN_SIZE_TRAIN[0] > 320  # 12 px objects: the input is enlarged
    saved = load_config(str(tmp_path / "out" / "config.yaml"))
    assert saved.MODEL.ANCHOR_GENERATOR.SIZES == expected.sizes


def test_a_model_is_not_built_from_unresolved_anchors():
    cfg = _config("MODEL.RETINANET_EXT.ANCHORS_FROM_DATA", "True")
    with pytest.raises(ValueError, match="OUTPUT_DIR/config.yaml"):
        Trainer.build_model(cfg)
