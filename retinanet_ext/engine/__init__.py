"""Training and evaluation: Detectron2's trainer and evaluator, driven by our config."""

from retinanet_ext.engine.config_checks import check_config
from retinanet_ext.engine.dataset_checks import check_datasets_at_start, prepare_datasets
from retinanet_ext.engine.guard import TrainingDivergedError
from retinanet_ext.engine.setup import (
    ConfigError,
    MissingDatasetError,
    check_datasets_available,
    load_config,
    resolve_device,
)
from retinanet_ext.engine.threads import available_cpus, configure_cpu_threads
from retinanet_ext.engine.trainer import CheckpointError, Trainer, evaluate, load_weights

__all__ = [
    "CheckpointError",
    "ConfigError",
    "MissingDatasetError",
    "Trainer",
    "TrainingDivergedError",
    "available_cpus",
    "check_config",
    "check_datasets_at_start",
    "check_datasets_available",
    "configure_cpu_threads",
    "evaluate",
    "load_config",
    "load_weights",
    "prepare_datasets",
    "resolve_device",
]
