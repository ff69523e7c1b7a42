"""The data checks a run makes at start, with its config: unusable images stop it or are
dropped (``DATALOADER.SKIP_BAD_IMAGES``; the list in ``OUTPUT_DIR/dropped_images.txt``),
then the background images per split and the leakage between training and test go to the
log. ``train_net.py`` runs them before it builds anything; the
:class:`~retinanet_ext.engine.Trainer`'s data loaders apply the same image policy, for a
``Trainer`` built in a program of one's own."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from detectron2.config import CfgNode
from detectron2.utils import comm

from retinanet_ext.data.catalog import cached_summary, prepare_dataset
from retinanet_ext.data.split_checks import (
    background_report,
    find_shared_images,
    leakage_warning,
    split_records,
)
from retinanet_ext.data.validation import DatasetSummary

__all__ = ["DROPPED_IMAGES_FILE", "check_datasets_at_start", "prepare_datasets"]

logger = logging.getLogger(__name__)

#: In OUTPUT_DIR: one line per dropped image, ``dataset<TAB>file<TAB>why``.
DROPPED_IMAGES_FILE = "dropped_images.txt"


def prepare_datasets(cfg: CfgNode, names: Sequence[str] | None = None) -> list[DatasetSummary]:
    """Apply ``cfg``'s image policy to the datasets ``names`` (default: ``DATASETS.TRAIN`` and
    ``DATASETS.TEST``) that retinanet_ext registered (see
    :func:`retinanet_ext.data.catalog.prepare_dataset`); where images were dropped, write
    them all (of every dataset of the config) to ``OUTPUT_DIR/dropped_images.txt``.

    Raises:
        DatasetError: an image cannot be used and ``DATALOADER.SKIP_BAD_IMAGES`` is off.
    """
    all_names = list(dict.fromkeys([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]))
    summaries = [s for name in (all_names if names is None else names)
                 if (s := prepare_dataset(name, cfg)) is not None]
    if any(s.dropped_images for s in summaries) and comm.is_main_process():
        _write_dropped(cfg, [s for name in all_names if (s := cached_summary(name))])
    return summaries


def _write_dropped(cfg: CfgNode, summaries: list[DatasetSummary]) -> None:
    text = "".join(f"{summary.name}\t{file_name}\t{' '.join(why.split())}\n"
                   for summary in summaries
                   for file_name, why in summary.dropped_images.items())
    path = os.path.join(cfg.OUTPUT_DIR, DROPPED_IMAGES_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:  # the loaders apply the policy again: written already
                return
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    logger.info("Dropped images listed in %s", path)


def _recap(summary: DatasetSummary) -> None:
    """One line for the log file of what validation warned of on the console before it
    existed: truncated images read, images dropped."""
    if summary.truncated_images or summary.dropped_images:
        logger.info("Dataset '%s': %d truncated images read as far as they go, %d images "
                    "dropped with their annotations%s", summary.name,
                    len(summary.truncated_images), len(summary.dropped_images),
                    f" (OUTPUT_DIR/{DROPPED_IMAGES_FILE})" if summary.dropped_images else "")


def check_datasets_at_start(cfg: CfgNode, *, training: bool = True) -> None:
    """:func:`prepare_datasets`, then to the log: per split, the images and the background
    images (and how many of them training keeps); with ``training``, a warning naming the
    test images that are also in the training set (same file content), if any."""
    splits = {"TRAIN": list(cfg.DATASETS.TRAIN) if training else [],
              "TEST": list(cfg.DATASETS.TEST)}
    for summary in prepare_datasets(cfg, splits["TRAIN"] + splits["TEST"]):
        _recap(summary)
    view = cfg.clone()
    view.defrost()
    view.DATASETS.TRAIN, view.DATASETS.TEST = splits["TRAIN"], splits["TEST"]
    records = split_records(view)
    report = background_report(view, records)
    if report:
        logger.info("Data at start:\n%s", report)
    if splits["TRAIN"] and splits["TEST"]:
        pairs = find_shared_images([r["file_name"] for r in records["training"]],
                                   [r["file_name"] for r in records["test"]])
        warning = leakage_warning(pairs, len(records["test"]))
        if warning:
            logger.warning(warning)
