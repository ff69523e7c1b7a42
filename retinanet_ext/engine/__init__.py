"""Training and evaluation: Detectron2's trainer and evaluator, driven by our config."""

from retinanet_ext.engine.setup import (
    ConfigError,
    MissingDatasetError,
    check_datasets_available,
    load_config,
    resolve_device,
)
from retinanet_ext.engine.trainer import CheckpointError, Trainer, evaluate, load_weights

__all__ = [
    "CheckpointError",
    "ConfigError",
    "MissingDatasetError",
    "Trainer",
    "check_datasets_available",
    "evaluate",
    "load_config",
    "load_weights",
    "resolve_device",
]
