"""Turning a config file and command-line overrides into a checked, frozen config.

Every failure here is one clear message naming the file or key, raised before any
model, data loader or output file is created.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog

from retinanet_ext.config import (
    get_retinanet_ext_cfg,
    rename_deprecated_keys,
    rename_deprecated_overrides,
)
from retinanet_ext.data.formats import dataset_paths
from retinanet_ext.engine.config_checks import ConfigError, check_config

logger = logging.getLogger(__name__)


class MissingDatasetError(FileNotFoundError):
    """A dataset named in the config is not registered or its files are absent."""


def _merge(where: str, merge: Callable[[], None]) -> None:
    """Run one merge step, turning its failures into a ConfigError naming ``where``."""
    try:
        merge()
    except yaml.YAMLError as error:
        raise ConfigError(f"{where} is not valid safe YAML: {error}") from error
    except KeyError as error:  # yacs: "Non-existent config key: MODEL.X"
        raise ConfigError(f"{where}: {error.args[0] if error.args else error}") from error
    except (ValueError, TypeError, AssertionError) as error:
        raise ConfigError(f"{where}: {error}") from error


def load_config(config_file: str | None, opts: list[str] | None = None) -> CfgNode:
    """Detectron2's defaults + retinanet_ext's keys, merged with a YAML file and overrides.

    Config files are read with safe YAML only: ``!!python/...`` tags are refused. A key's old
    name (:data:`retinanet_ext.config.RENAMED_KEYS`) still reads, with a warning. Values are
    checked (:func:`~retinanet_ext.engine.config_checks.check_config`). Not frozen, so
    callers may adjust it.
    """
    cfg = get_retinanet_ext_cfg()
    if config_file:
        if not Path(config_file).is_file():
            raise ConfigError(f"config file {config_file} does not exist")
        _merge(f"config file {config_file}", lambda: _merge_from_file(cfg, config_file))
    if opts:
        if len(opts) % 2:
            raise ConfigError(
                f"command-line overrides must be KEY VALUE pairs; got an odd count: {opts}"
            )
        _merge("command-line override", lambda: cfg.merge_from_list(
            rename_deprecated_overrides(list(opts), "command-line override")))
    check_config(cfg)  # values in range, before anything is built (engine/config_checks.py)
    return cfg


class _RenamingCfgNode(CfgNode):
    """Detectron2's CfgNode that reads each YAML file, and each of its ``_BASE_`` files
    before they merge, with the old names of renamed keys moved to the new ones."""

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> dict:
        loaded = super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)
        return rename_deprecated_keys(loaded, f"config file {filename}")


def _merge_from_file(cfg: CfgNode, config_file: str) -> None:
    """``cfg.merge_from_file(config_file)`` (safe YAML; Detectron2's VERSION upgrade), where
    a renamed key's old name reads as the new one: merged into a copy that reads files so,
    then copied back."""
    staged = _RenamingCfgNode(cfg)
    staged.merge_from_file(config_file, allow_unsafe=False)
    cfg.merge_from_other_cfg(CfgNode(staged))


def resolve_device(cfg: CfgNode) -> str:
    """Fall back to CPU, with one log line, where the config asks for CUDA and there is none."""
    device = cfg.MODEL.DEVICE
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE is %r but CUDA is not available: running on CPU", device)
        cfg.MODEL.DEVICE = "cpu"
    return cfg.MODEL.DEVICE


def _dataset_paths(name: str) -> list[tuple[str, str]]:
    """(what, path) pairs a registered dataset reads: its format's entry in the format
    table names the metadata keys (``retinanet_ext.data.formats.dataset_paths``)."""
    return dataset_paths(name)


def check_datasets_available(dataset_names: list[str] | tuple[str, ...]) -> None:
    """Fail at start, with one message, if a dataset is unregistered or its files are absent.

    Detectron2's built-in datasets (``coco_2017_train``, ...) are registered under
    ``$DETECTRON2_DATASETS`` (default ``./datasets``); this names the path it looked
    for and that variable instead of failing deep inside the data loader.
    """
    for name in dataset_names:
        if name not in DatasetCatalog.list():
            raise MissingDatasetError(
                f"dataset '{name}' is not registered. Register it with "
                f"'--dataset {name}=FORMAT:PATH...' (see README, 'Your own data') or use one of "
                f"the registered names, e.g. {sorted(DatasetCatalog.list())[:8]}"
            )
        for what, path in _dataset_paths(name):
            if not os.path.exists(path):
                root = os.environ.get("DETECTRON2_DATASETS", "datasets")
                raise MissingDatasetError(
                    f"dataset '{name}': its {what} {path} does not exist. Detectron2's built-in "
                    f"datasets are looked for under $DETECTRON2_DATASETS (now: "
                    f"{'set to ' if 'DETECTRON2_DATASETS' in os.environ else 'unset, default '}"
                    f"'{root}'); set DETECTRON2_DATASETS to the folder that holds "
                    f"'{Path(path).relative_to(root) if path.startswith(root) else path}', or "
                    f"train on your own data with '--dataset'."
                )
