"""Config loading, device fallback and the start-up dataset check of train_net.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from retinanet_ext.demo import add_demo_config
from retinanet_ext.engine import (
    ConfigError,
    MissingDatasetError,
    check_datasets_available,
    load_config,
    resolve_device,
)

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml")) + sorted(
    (REPO_ROOT / "configs" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_is_safe_yaml_and_loads(config: Path) -> None:
    with open(config) as f:
        yaml.safe_load(f)  # raises on !!python tags
    # The demo's config carries the demo's own keys (DEMO.*), added by the demo.
    add_keys = add_demo_config if config.name == "retinanet_demo_synthetic.yaml" else None
    cfg = load_config(str(config), add_keys=add_keys)
    if config.name.startswith(("retinanet_R", "Base-")) or config.parent.name == "recipes":
        assert cfg.MODEL.META_ARCHITECTURE == "RetinaNetExt"
        assert cfg.MODEL.ANCHOR_GENERATOR.NAME == "RetinaNetExtAnchorGenerator"


def test_anchor_sizes_are_written_out_like_detectron2s() -> None:
    cfg = load_config(str(REPO_ROOT / "configs" / "Base-RetinaNet.yaml"))
    expected = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]]
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == expected


def test_r101_recipe_is_detectron2s_3x() -> None:
    cfg = load_config(str(REPO_ROOT / "configs" / "retinanet_R101_FPN.yaml"))
    assert cfg.MODEL.RESNETS.DEPTH == 101
    assert cfg.SOLVER.MAX_ITER == 270000 and tuple(cfg.SOLVER.STEPS) == (210000, 250000)
    assert cfg.SOLVER.BASE_LR == 0.01 and cfg.SOLVER.IMS_PER_BATCH == 16
    assert cfg.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-101.pkl"


def test_unsafe_yaml_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "unsafe.yaml"
    config.write_text(
        'MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: !!python/object/apply:eval ["[[32]]"]\n'
    )
    with pytest.raises(ConfigError, match="unsafe.yaml is not valid safe YAML"):
        load_config(str(config))


def test_unknown_key_in_file_names_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("MODEL:\n  RETINANET:\n    NUM_CLASES: 3\n")
    with pytest.raises(ConfigError, match=r"typo.yaml.*MODEL.RETINANET.NUM_CLASES"):
        load_config(str(config))


def test_bad_overrides_are_reported() -> None:
    with pytest.raises(ConfigError, match="MODEL.NOPE"):
        load_config(None, ["MODEL.NOPE", "1"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(None, ["MODEL.DEVICE"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/config.yaml")


def test_cuda_request_falls_back_to_cpu_with_one_log_line(caplog, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(None, ["MODEL.DEVICE", "cuda"])
    with caplog.at_level("WARNING"):
        assert resolve_device(cfg) == "cpu"
    assert [r.message for r in caplog.records] == [
        "MODEL.DEVICE is 'cuda' but CUDA is not available: running on CPU"
    ]


def test_missing_builtin_dataset_names_path_and_variable(monkeypatch) -> None:
    # Detectron2 registered coco_2017_val under $DETECTRON2_DATASETS at import time.
    from detectron2.data import MetadataCatalog

    json_file = MetadataCatalog.get("coco_2017_val").json_file
    if Path(json_file).exists():
        pytest.skip(f"COCO is present here ({json_file})")
    with pytest.raises(MissingDatasetError) as error:
        check_datasets_available(["coco_2017_val"])
    assert json_file in str(error.value)
    assert "DETECTRON2_DATASETS" in str(error.value)


def test_unregistered_dataset_is_reported() -> None:
    with pytest.raises(MissingDatasetError, match="'no_such_dataset' is not registered"):
        check_datasets_available(["no_such_dataset"])


def test_train_net_fails_at_start_without_writing(tmp_path: Path) -> None:
    output_dir = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"),
         "--config-file", str(REPO_ROOT / "configs" / "retinanet_R101_FPN.yaml"),
         "OUTPUT_DIR", str(output_dir)],
        capture_output=True, text=True, timeout=300,
        env={"DETECTRON2_DATASETS": str(tmp_path / "nowhere"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2, result.stderr
    assert str(tmp_path / "nowhere" / "coco" / "annotations") in result.stderr
    assert "DETECTRON2_DATASETS" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output_dir.exists()
