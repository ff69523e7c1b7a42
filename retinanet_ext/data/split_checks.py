"""Checks across a config's datasets at start: the same image in the training and the test
sets (leakage), and the images without boxes (background) of each split, with the share of
them that training keeps (``DATALOADER.BACKGROUND_SHARE``).

* :func:`find_shared_images`: pairs of files with the same content, one from each side.
  Files are grouped by size first (a ``stat``); only where a size occurs on both sides are
  their first 64 KiB hashed (BLAKE2b), and only where those match too the whole files, so a
  check of COCO's 118k + 5k images reads almost nothing.
* :func:`training_dataset_dicts`: the training records with that share of background
  images, for Detectron2's ``build_detection_train_loader``.
* :func:`split_report`: both, in words, for the log and ``--check-data``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts

from retinanet_ext.data.formats import FORMAT_METADATA_KEY

__all__ = ["background_report", "find_shared_images", "is_background", "keep_background_share",
           "leakage_warning", "split_records", "split_report", "training_dataset_dicts"]

logger = logging.getLogger("retinanet_ext.data")

#: Pairs of shared images quoted in a leakage warning.
MAX_LEAKAGE_EXAMPLES = 5
_HASH_CHUNK = 1 << 20
_HEAD_BYTES = 1 << 16


def _file_digest(path: str, limit: int | None = None) -> bytes:
    """BLAKE2b of the file's bytes, or of its first ``limit`` bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if limit is not None:
            digest.update(f.read(limit))
            return digest.digest()
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.digest()


def _files_by_size(paths: Iterable[str]) -> dict[int, list[str]]:
    by_size: dict[int, list[str]] = defaultdict(list)
    for path in dict.fromkeys(paths):
        try:
            by_size[os.path.getsize(path)].append(path)
        except OSError:  # gone since validation: the loader will say so
            continue
    return by_size


def find_shared_images(train_files: Iterable[str],
                       test_files: Iterable[str]) -> list[tuple[str, str]]:
    """(training file, test file) pairs with the same bytes: one pair per test file whose
    content is also in the training files (the first such training file). Only files whose
    size occurs on both sides are read."""
    train_by_size, test_by_size = _files_by_size(train_files), _files_by_size(test_files)
    pairs = []
    for size in sorted(train_by_size.keys() & test_by_size.keys()):
        whole = size <= _HEAD_BYTES  # the head is the whole file
        train_by_head: dict[bytes, list[str]] = defaultdict(list)
        for path in train_by_size[size]:
            train_by_head[_file_digest(path, _HEAD_BYTES)].append(path)
        full_digests: dict[str, bytes] = {}
        for path in test_by_size[size]:
            candidates = train_by_head.get(_file_digest(path, _HEAD_BYTES), [])
            if candidates and not whole:
                digest = _file_digest(path)
                candidates = [c for c in candidates if digest == full_digests.setdefault(
                    c, _file_digest(c))]
            if candidates:
                pairs.append((candidates[0], path))
    return pairs


def leakage_warning(pairs: Sequence[tuple[str, str]], num_test_images: int) -> str | None:
    """The warning for :func:`find_shared_images`'s pairs, with a few examples; None if none."""
    if not pairs:
        return None
    examples = "; ".join(f"{test} = {train}" for train, test in pairs[:MAX_LEAKAGE_EXAMPLES])
    more = f"; ... and {len(pairs) - MAX_LEAKAGE_EXAMPLES} more" \
        if len(pairs) > MAX_LEAKAGE_EXAMPLES else ""
    return (f"Leakage: {len(pairs)} of the {num_test_images} test images are also in the "
            f"training set (same file content): {examples}{more}. The evaluation overstates "
            "how the model does on new images; remove them from one of the sets.")


def is_background(record: dict[str, Any]) -> bool:
    """No box to learn from: no annotation, or only crowd regions (what Detectron2's
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` drops)."""
    return not any(not a.get("iscrowd", 0) for a in record.get("annotations", []))


def keep_background_share(records: Sequence[dict[str, Any]], share: float,
                          seed: int = 0) -> list[dict[str, Any]]:
    """``records`` with ``round(share * n)`` of their ``n`` background images, drawn at random
    with ``seed`` (the same on every process), in their order; the others all kept."""
    background = [i for i, record in enumerate(records) if is_background(record)]
    kept = set(random.Random(seed).sample(background, round(share * len(background))))
    return [record for i, record in enumerate(records)
            if i in kept or not is_background(record)]


def _background_seed(cfg: CfgNode) -> int:
    return cfg.SEED if cfg.SEED >= 0 else 0  # SEED < 0 differs per process: not usable here


def training_dataset_dicts(cfg: CfgNode) -> list[dict[str, Any]] | None:
    """The training records with ``DATALOADER.BACKGROUND_SHARE`` of their background images,
    as ``build_detection_train_loader(dataset=...)`` takes them; None where the key is -1
    (Detectron2 builds them: ``FILTER_EMPTY_ANNOTATIONS`` decides)."""
    share = cfg.DATALOADER.get("BACKGROUND_SHARE", -1)
    if share < 0:
        return None
    records = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=False,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None)
    kept = keep_background_share(records, share, _background_seed(cfg))
    logger.info("DATALOADER.BACKGROUND_SHARE %g: training on %d images, %d of them without "
                "boxes (of %d)", share, len(kept), sum(map(is_background, kept)),
                sum(map(is_background, records)))
    return kept


def _background_in_training(cfg: CfgNode, num_background: int) -> str:
    share = cfg.DATALOADER.get("BACKGROUND_SHARE", -1)
    if share >= 0:
        return (f"training keeps {round(share * num_background)} "
                f"(DATALOADER.BACKGROUND_SHARE {share:g})")
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        return ("training keeps none (DATALOADER.FILTER_EMPTY_ANNOTATIONS True; "
                "DATALOADER.BACKGROUND_SHARE keeps a share)")
    return "training keeps all (DATALOADER.FILTER_EMPTY_ANNOTATIONS False)"


def is_registered_here(name: str) -> bool:
    """Whether retinanet_ext registered dataset ``name`` (its metadata names the format)."""
    return name in DatasetCatalog.list() and \
        MetadataCatalog.get(name).get(FORMAT_METADATA_KEY) is not None


def split_records(cfg: CfgNode) -> dict[str, list[dict[str, Any]]]:
    """The records of ``DATASETS.TRAIN`` and of ``DATASETS.TEST``, keyed "training", "test":
    of the datasets retinanet_ext registered (validated once, cached); loading one registered
    elsewhere (Detectron2's COCO, ...) again would run its whole loader, so it is left out."""
    return {split: [r for name in names if is_registered_here(name)
                    for r in DatasetCatalog.get(name)]
            for split, names in (("training", cfg.DATASETS.TRAIN), ("test", cfg.DATASETS.TEST))}


def background_report(cfg: CfgNode, records: dict[str, list[dict[str, Any]]]) -> str:
    """Per split: images, background images and, for training, how many it keeps."""
    lines = []
    for split, names in (("training", cfg.DATASETS.TRAIN), ("test", cfg.DATASETS.TEST)):
        elsewhere = [name for name in names if not is_registered_here(name)]
        if elsewhere:
            lines.append(f"Not counted (registered elsewhere): {', '.join(elsewhere)}")
        names = [name for name in names if is_registered_here(name)]
        if not names:
            continue
        num_background = sum(map(is_background, records[split]))
        line = (f"{split.capitalize()} set ({', '.join(names)}): {len(records[split])} images, "
                f"{num_background} without boxes (background)")
        if split == "training":
            line += f": {_background_in_training(cfg, num_background)}"
        lines.append(line)
    return "\n".join(lines)


def split_report(cfg: CfgNode) -> str:
    """:func:`background_report`, then the leakage between the training and the test sets."""
    records = split_records(cfg)
    lines = [background_report(cfg, records)]
    if cfg.DATASETS.TRAIN and cfg.DATASETS.TEST:
        pairs = find_shared_images([r["file_name"] for r in records["training"]],
                                   [r["file_name"] for r in records["test"]])
        lines.append(leakage_warning(pairs, len(records["test"]))
                     or "Leakage: no test image is also in the training set (same content).")
    return "\n".join(line for line in lines if line)
