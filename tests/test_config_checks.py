"""Config checks before anything is built: each bad value is one clear error naming its key;
R-CNN keys that RetinaNet ignores get a warning naming the RetinaNet key to set."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retinanet_ext.engine import ConfigError, Trainer, check_config, load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICK_CONFIG = str(REPO_ROOT / "configs" / "retinanet_R18_FPN_quick.yaml")

BAD_VALUES = [
    # key, value, what the error says
    ("MODEL.RETINANET.NUM_CLASSES", "0", r"NUM_CLASSES must be in \[1, inf\], found 0"),
    ("MODEL.RETINANET.NUM_CLASSES", "-3", r"NUM_CLASSES must be in \[1, inf\], found -3"),
    ("MODEL.RETINANET.IOU_THRESHOLDS", "[0.5, 0.4]", r"IOU_THRESHOLDS must be increasing"),
    ("MODEL.RETINANET.IOU_THRESHOLDS", "[0.4, 1.5]", r"IOU_THRESHOLDS must hold IoUs in \[0, 1\]"),
    ("MODEL.RETINANET.IOU_THRESHOLDS", "['a', 0.5]", r"IOU_THRESHOLDS must hold numbers"),
    ("MODEL.RETINANET.IOU_LABELS", "[0, 1]", r"IOU_LABELS must hold 3 labels"),
    ("MODEL.RETINANET.PRIOR_PROB", "0.0", r"PRIOR_PROB must be in \(0.0, 1.0\), found 0.0"),
    ("MODEL.RETINANET.PRIOR_PROB", "1.0", r"PRIOR_PROB must be in \(0.0, 1.0\), found 1.0"),
    ("MODEL.RETINANET.FOCAL_LOSS_GAMMA", "-1.0", r"FOCAL_LOSS_GAMMA must be in \[0.0, inf\]"),
    ("MODEL.RETINANET.FOCAL_LOSS_ALPHA", "1.5", r"FOCAL_LOSS_ALPHA must be in \[-inf, 1.0\]"),
    ("MODEL.RETINANET.SMOOTH_L1_LOSS_BETA", "-0.1", r"SMOOTH_L1_LOSS_BETA must be in \[0.0"),
    ("MODEL.RETINANET.TOPK_CANDIDATES_TEST", "0", r"TOPK_CANDIDATES_TEST must be in \[1, inf\]"),
    ("MODEL.RETINANET.NMS_THRESH_TEST", "1.2", r"NMS_THRESH_TEST must be in \[0.0, 1.0\]"),
    ("MODEL.RETINANET.NMS_THRESH_TEST", "-0.1", r"NMS_THRESH_TEST must be in \[0.0, 1.0\]"),
    ("MODEL.RETINANET.SCORE_THRESH_TEST", "1.5", r"SCORE_THRESH_TEST must be in \[0.0, 1.0\]"),
    ("MODEL.RETINANET.NUM_CONVS", "-1", r"NUM_CONVS must be in \[0, inf\]"),
    ("MODEL.ANCHOR_GENERATOR.SIZES", "[]", r"SIZES must be a non-empty list"),
    ("MODEL.ANCHOR_GENERATOR.SIZES", "[[]]", r"SIZES must be a non-empty list"),
    ("MODEL.ANCHOR_GENERATOR.SIZES", "[[32, -64]]", r"SIZES must hold positive numbers"),
    ("MODEL.ANCHOR_GENERATOR.SIZES", "[['big']]", r"SIZES must hold positive numbers"),
    ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[0.0, 1.0]]", r"ASPECT_RATIOS must hold positive"),
    ("SOLVER.BASE_LR", "0.0", r"SOLVER.BASE_LR must be in \(0.0, inf\]"),
    ("SOLVER.IMS_PER_BATCH", "0", r"SOLVER.IMS_PER_BATCH must be in \[1, inf\]"),
    ("SOLVER.CHECKPOINT_PERIOD", "0", r"SOLVER.CHECKPOINT_PERIOD must be in \[1, inf\]"),
    ("TEST.DETECTIONS_PER_IMAGE", "0", r"TEST.DETECTIONS_PER_IMAGE must be in \[1, inf\]"),
    ("MODEL.RETINANET_EXT.CHECKPOINT_MAX_TO_KEEP", "-1",
     r"CHECKPOINT_MAX_TO_KEEP must be in \[0, inf\]"),
    ("MODEL.RETINANET_EXT.NUM_THREADS", "-2", r"NUM_THREADS must be in \[0, inf\]"),
    # wrong types: yacs refuses a type other than the default's, naming the key
    ("MODEL.RETINANET.NUM_CLASSES", "three", r"MODEL.RETINANET.NUM_CLASSES"),
    ("MODEL.RETINANET.PRIOR_PROB", "'0.01'", r"MODEL.RETINANET.PRIOR_PROB"),
]


@pytest.mark.parametrize("key,value,message", BAD_VALUES,
                         ids=[f"{k.split('.')[-1]}={v}" for k, v, _ in BAD_VALUES])
def test_each_bad_value_is_one_error_naming_the_key(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        load_config(QUICK_CONFIG, [key, value])
    assert key in str(error.value)


def test_the_shipped_configs_pass() -> None:
    configs = sorted((REPO_ROOT / "configs").glob("*.yaml"))
    configs += sorted((REPO_ROOT / "configs" / "recipes").glob("*.yaml"))
    assert len(configs) >= 4
    for config in configs:
        check_config(load_config(str(config)))


def test_values_set_after_loading_are_checked_by_the_trainer() -> None:
    cfg = load_config(QUICK_CONFIG)
    cfg.MODEL.RETINANET.PRIOR_PROB = 2.0
    with pytest.raises(ConfigError, match="PRIOR_PROB"):
        Trainer(cfg)  # before the model, data loader or output folder is built


def test_a_training_start_checks_the_config_once(tmp_path: Path, new_name,
                                                 monkeypatch) -> None:
    # load_config checks; the Trainer built from that config does not check it again.
    from _tiny_training import register_synthetic, synthetic_dataset, tiny_cfg

    from retinanet_ext.engine import config_checks

    train, val = new_name("train"), new_name("val")
    register_synthetic(synthetic_dataset(tmp_path / "data"), train, val)
    checks = []
    solver_check = config_checks._check_solver
    monkeypatch.setattr(config_checks, "_check_solver",
                        lambda cfg: checks.append(1) or solver_check(cfg))
    cfg = tiny_cfg(tmp_path / "out", train, val, "SOLVER.MAX_ITER", "1")
    cfg.freeze()
    Trainer(cfg)
    assert len(checks) == 1
    changed = cfg.clone()
    changed.defrost()
    changed.SOLVER.MAX_ITER = 2
    Trainer(changed)  # changed since: checked again
    assert len(checks) == 2


@pytest.mark.parametrize("rcnn_key,value,retinanet_key", [
    ("MODEL.ROI_HEADS.NUM_CLASSES", "7", "MODEL.RETINANET.NUM_CLASSES"),
    ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.61", "MODEL.RETINANET.SCORE_THRESH_TEST"),
    ("MODEL.ROI_HEADS.NMS_THRESH_TEST", "0.37", "MODEL.RETINANET.NMS_THRESH_TEST"),
])
def test_ignored_rcnn_keys_warn_with_the_retinanet_key(caplog, rcnn_key, value, retinanet_key):
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.engine.config_checks"):
        load_config(QUICK_CONFIG, [rcnn_key, value])
    assert f"{rcnn_key} is set to {value}" in caplog.text
    assert f"set {retinanet_key} instead" in caplog.text


def test_rcnn_keys_agreeing_with_retinanet_or_other_architectures_do_not_warn(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.engine.config_checks"):
        load_config(QUICK_CONFIG, ["MODEL.ROI_HEADS.NUM_CLASSES", "3"])  # == RETINANET's
        load_config(QUICK_CONFIG, ["MODEL.META_ARCHITECTURE", "GeneralizedRCNN",
                                   "MODEL.ROI_HEADS.NUM_CLASSES", "11"])
    assert "ROI_HEADS" not in caplog.text


def test_train_net_prints_one_error_line_before_writing_anything(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), "--config-file", QUICK_CONFIG,
         "MODEL.RETINANET.IOU_THRESHOLDS", "[0.5, 0.4]", "OUTPUT_DIR", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: MODEL.RETINANET.IOU_THRESHOLDS must be increasing (background below the "
        "first, foreground from the last), found [0.5, 0.4]"]
    assert not (tmp_path / "out").exists()
