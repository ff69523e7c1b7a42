"""A tiny registered dataset and a tiny training config, for in-process Trainer tests
(EMA, class-balanced sampling): a few synthetic 64x64 images, ResNet-18, a narrow FPN."""

from __future__ import annotations

from pathlib import Path

from detectron2.config import CfgNode

from retinanet_ext.data import register_coco_dataset, synthetic
from retinanet_ext.engine import load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICK_CONFIG = str(REPO_ROOT / "configs" / "retinanet_R18_FPN_quick.yaml")

#: Overrides that make a run of a few iterations take seconds on 2 CPU cores.
TINY_OPTS = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.RETINANET.NUM_CONVS", "1",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.BASE_LR", "0.001",
    "DATALOADER.NUM_WORKERS", "0", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
    "MODEL.RETINANET.NUM_CLASSES", str(len(synthetic.CLASS_NAMES)),
]


def synthetic_dataset(output_dir: Path, num_train: int = 4, num_val: int = 2) -> dict:
    """A synthetic detection set of 64x64 images (COCO JSON) under ``output_dir``."""
    return synthetic.generate_synthetic_dataset(
        str(output_dir), num_train=num_train, num_val=num_val, image_size=64, seed=1,
        objects_per_image=(2, 4), object_size=(12.0, 24.0))


def register_synthetic(info: dict, train_name: str, val_name: str) -> None:
    for name, split in ((train_name, "train"), (val_name, "val")):
        paths = info["splits"][split]
        register_coco_dataset(name, paths["json_file"], paths["image_root"])


def tiny_cfg(output_dir: Path, train_name: str, val_name: str, *opts: str) -> CfgNode:
    """The quick config at tiny size on the registered datasets."""
    return load_config(QUICK_CONFIG, [
        *TINY_OPTS, "DATASETS.TRAIN", f"('{train_name}',)", "DATASETS.TEST", f"('{val_name}',)",
        "OUTPUT_DIR", str(output_dir), *opts])
