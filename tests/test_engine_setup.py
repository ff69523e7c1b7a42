"""Config loading, device fallback and the start-up dataset check of train_net.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from retinanet_ext.engine import (
    ConfigError,
    MissingDatasetError,
    check_datasets_available,
    load_config,
    resolve_device,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml")) + sorted(
    (REPO_ROOT / "configs" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_is_safe_yaml_and_loads(config: Path) -> None:
    with open(config) as f:
        yaml.safe_load(f)  # raises on !!python tags
    cfg = load_config(str(config))  # the demo's DEMO.* keys included
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


@pytest.mark.parametrize("flags", [
    [],  # README's and docs/training.md's commands, as written, on a machine without COCO
    ["--resume"],
    ["--eval-only", "MODEL.WEIGHTS", "output/model_final.pth"],
], ids=["train", "resume", "eval-only"])
def test_train_net_fails_at_start_without_writing(tmp_path: Path, flags: list[str]) -> None:
    output_dir = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", "configs/retinanet_R101_FPN.yaml",
         *flags, "OUTPUT_DIR", str(output_dir)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        env={"DETECTRON2_DATASETS": str(tmp_path / "nowhere"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2, result.stderr
    assert str(tmp_path / "nowhere" / "coco" / "annotations") in result.stderr
    assert "DETECTRON2_DATASETS" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output_dir.exists()


# Renamed keys (retinanet_ext.config.RENAMED_KEYS): old names still load, with one warning.

OLD_EMA_CONFIG = REPO_ROOT / "benchmarks" / "results" / "recipe_ablation" / "runs" / \
    "+EMA__134fd2" / "seed0" / "config.yaml"


def _renamed_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "renamed config keys" in r.getMessage()]


def test_a_saved_config_with_the_old_engine_node_loads(caplog) -> None:
    # Written by train_net.py before the top-level RETINANET_EXT node moved under MODEL.
    assert "\nRETINANET_EXT:\n" in OLD_EMA_CONFIG.read_text()
    with caplog.at_level("WARNING"):
        cfg = load_config(str(OLD_EMA_CONFIG))
    ema = cfg.MODEL.RETINANET_EXT.EMA
    assert (ema.ENABLED, ema.DECAY, ema.WARMUP_ITERS) == (True, 0.99, 100)
    assert "RETINANET_EXT" not in cfg
    [message] = _renamed_warnings(caplog)
    assert "RETINANET_EXT.EMA.DECAY -> MODEL.RETINANET_EXT.EMA.DECAY" in message
    assert "RETINANET_EXT.NUM_THREADS -> MODEL.RETINANET_EXT.NUM_THREADS" in message


def test_old_names_in_overrides_load_with_one_warning(caplog) -> None:
    with caplog.at_level("WARNING"):
        cfg = load_config(None, ["RETINANET_EXT.CHECKPOINT_MAX_TO_KEEP", "3",
                                 "RETINANET_EXT.EMA.ENABLED", "True"])
    assert cfg.MODEL.RETINANET_EXT.CHECKPOINT_MAX_TO_KEEP == 3
    assert cfg.MODEL.RETINANET_EXT.EMA.ENABLED is True
    [message] = _renamed_warnings(caplog)
    assert ("RETINANET_EXT.CHECKPOINT_MAX_TO_KEEP -> MODEL.RETINANET_EXT.CHECKPOINT_MAX_TO_KEEP"
            in message)
    with pytest.raises(ConfigError, match="must be in"):  # checked under the new name
        load_config(None, ["RETINANET_EXT.NUM_THREADS", "-1"])


@pytest.mark.parametrize("base_key, child_key", [("old", "new"), ("new", "old")])
def test_a_file_overrides_its_base_whichever_name_each_uses(tmp_path: Path, base_key: str,
                                                            child_key: str) -> None:
    text = {"old": "RETINANET_EXT:\n  NUM_THREADS: {}\n",
            "new": "MODEL:\n  RETINANET_EXT:\n    NUM_THREADS: {}\n"}
    (tmp_path / "base.yaml").write_text(
        f"_BASE_: {REPO_ROOT / 'configs' / 'retinanet_R18_FPN_quick.yaml'}\n"
        + text[base_key].format(1))
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\n" + text[child_key].format(2))
    assert load_config(str(tmp_path / "child.yaml")).MODEL.RETINANET_EXT.NUM_THREADS == 2
    assert load_config(str(tmp_path / "base.yaml")).MODEL.RETINANET_EXT.NUM_THREADS == 1


def test_unknown_keys_under_the_old_node_are_still_refused(tmp_path: Path) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("RETINANET_EXT:\n  NUM_THREADS: 1\n  NUM_THREAD: 2\n")
    with pytest.raises(ConfigError, match="typo.yaml.*RETINANET_EXT"):
        load_config(str(config))


def test_a_merge_outside_load_config_names_the_new_key() -> None:
    # Detectron2's own merge (yacs' renamed-key mechanism): an error that says where it went.
    from retinanet_ext import get_retinanet_ext_cfg

    cfg = get_retinanet_ext_cfg()
    with pytest.raises(KeyError, match="renamed to MODEL.RETINANET_EXT.EMA.DECAY"):
        cfg.merge_from_list(["RETINANET_EXT.EMA.DECAY", "0.5"])
    with pytest.raises(KeyError, match="RETINANET_EXT was renamed to MODEL.RETINANET_EXT"):
        cfg.merge_from_file(str(OLD_EMA_CONFIG))


def test_the_demo_keys_are_the_projects_and_match_the_generator() -> None:
    # Every tool loads the demo's config (DEMO.*); its defaults are the generator's.
    import inspect

    from retinanet_ext.data import synthetic

    demo = load_config(None).DEMO
    defaults = inspect.signature(synthetic.generate_synthetic_dataset).parameters
    assert demo.CLASS_FREQUENCIES == list(synthetic.CLASS_FREQUENCIES)
    for key in ("NUM_TRAIN", "NUM_VAL", "IMAGE_SIZE", "CLUTTER", "NOISE", "CLASS_COLOUR_PROB"):
        assert demo[key] == defaults[key.lower()].default, key
    assert demo.DATA_SEED == defaults["seed"].default
    assert demo.OBJECTS_PER_IMAGE == list(defaults["objects_per_image"].default)
    assert demo.OBJECT_SIZE == list(defaults["object_size"].default)
