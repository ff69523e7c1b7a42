"""Registration plumbing shared by the format loaders, and the checks run on registered data.

A format module (:mod:`.coco`, :mod:`.voc`, :mod:`.csv_dataset`) describes a dataset by a
*raw loader*: a function returning ``(records, thing_classes, metadata)`` where records
are Detectron2 dataset dicts that have not been validated yet. :func:`register_validated`
puts it in Detectron2's ``DatasetCatalog``; on first use the raw loader runs, the records
go through :func:`.validation.validate_records`, and the result is cached, so warnings
are logged once and later ``DatasetCatalog.get`` calls are cheap.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from retinanet_ext.data.box_sizes import GroundTruthBoxes, box_size_table, gather_boxes
from retinanet_ext.data.formats import FORMAT_METADATA_KEY, get_format
from retinanet_ext.data.validation import (
    DatasetError,
    DatasetSummary,
    decode_image,
    validate_records,
)

RawLoader = Callable[[], tuple[list[dict[str, Any]], list[str], dict[str, Any]]]
"""Returns (unvalidated records, thing_classes, extra metadata set once loaded)."""


@dataclass
class _Registration:
    key: tuple
    source: str
    load_raw: RawLoader
    records: list[dict[str, Any]] | None = None
    summary: DatasetSummary | None = None


_REGISTRATIONS: dict[str, _Registration] = {}


def register_validated(
    name: str,
    load_raw: RawLoader,
    *,
    key: tuple,
    source: str,
    metadata: dict[str, Any],
    data_format: str,
) -> None:
    """Register ``name`` in Detectron2's catalogs with validation on first load.

    Args:
        name: the dataset name to use in ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        load_raw: the format's raw loader (see the module docstring).
        key: the registration's arguments. Registering the same name again with an equal
            key does nothing (so a script may register in every process); with a different
            key it is an error.
        source: a short description for messages, e.g. ``"voc: /data/BCCD (train)"``.
        metadata: set on ``MetadataCatalog.get(name)`` now (``evaluator_type`` is added).
        data_format: the format's name in :data:`.formats.DATASET_FORMATS`, recorded in
            the metadata so that the checks at start find the files to look for.

    Raises:
        DatasetError: ``name`` is empty, or already registered with different arguments.
    """
    if not name or not isinstance(name, str):
        raise DatasetError(f"A dataset name must be a non-empty string, got {name!r}.")
    get_format(data_format)  # an unknown format is a programming error, found here
    existing = _REGISTRATIONS.get(name)
    if existing is not None and existing.key == key:
        return
    if existing is not None or name in DatasetCatalog.list():
        was = f" as {existing.source}" if existing else ""
        raise DatasetError(
            f"Dataset name '{name}' is already registered{was}; cannot register it again as "
            f"{source}. Choose another name, or call unregister_dataset('{name}') first."
        )
    registration = _Registration(key=key, source=source, load_raw=load_raw)
    _REGISTRATIONS[name] = registration

    def load() -> list[dict[str, Any]]:
        _ensure_loaded(name)
        # The cache must survive callers that edit the dicts they get.
        return copy.deepcopy(registration.records)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        evaluator_type="coco", **{FORMAT_METADATA_KEY: data_format}, **metadata
    )


def _ensure_loaded(name: str) -> _Registration:
    registration = _REGISTRATIONS[name]
    if registration.records is None:
        raw_records, thing_classes, extra_metadata = registration.load_raw()
        records, summary = validate_records(
            name, raw_records, thing_classes, source=registration.source
        )
        MetadataCatalog.get(name).set(thing_classes=list(thing_classes), **extra_metadata)
        registration.records, registration.summary = records, summary
    return registration


def unregister_dataset(name: str) -> None:
    """Remove ``name`` from Detectron2's catalogs and this package's cache (if present)."""
    _REGISTRATIONS.pop(name, None)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def _require_registered(name: str) -> None:
    if name not in DatasetCatalog.list():
        ours = sorted(_REGISTRATIONS)
        raise DatasetError(
            f"Dataset '{name}' is not registered. Register it first (e.g. train_net.py "
            f"--dataset '{name}=voc:ROOT:SPLIT', or register_voc_dataset / "
            f"register_coco_dataset / register_csv_dataset). Registered by retinanet_ext: "
            f"{ours or 'none'}."
        )


def _validated(name: str) -> tuple[list[dict[str, Any]], DatasetSummary]:
    """The validated records of ``name`` and their summary (see :func:`validate_dataset`)."""
    _require_registered(name)
    if name in _REGISTRATIONS:
        registration = _ensure_loaded(name)
        return registration.records, registration.summary
    records = DatasetCatalog.get(name)
    thing_classes = MetadataCatalog.get(name).get("thing_classes")
    if thing_classes is None:
        largest = max(
            (a["category_id"] for r in records for a in r.get("annotations", [])),
            default=-1,
        )
        thing_classes = [f"class_{i}" for i in range(largest + 1)]
    return validate_records(name, records, thing_classes, source="registered elsewhere")


def validate_dataset(name: str, *, decode_images: bool = False) -> DatasetSummary:
    """Load and validate dataset ``name`` now, and return its summary.

    For datasets registered by this package the result is the cached one (validation runs
    once). Any other registered Detectron2 dataset is validated too, as a report only:
    what it would clip and drop is counted, but its data is not changed.

    Args:
        name: a registered dataset name.
        decode_images: also decode every image fully, to find truncated or corrupt image
            bodies that a header check misses (much slower: every pixel is decoded).

    Raises:
        DatasetError: the dataset is not registered, or an annotation or image is unusable.
    """
    records, summary = _validated(name)
    if decode_images:
        failures = []
        for record in records:
            try:
                decode_image(record["file_name"])
            except DatasetError as error:
                failures.append(str(error))
        if failures:
            shown = "\n  ".join(failures[:10])
            more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
            raise DatasetError(
                f"Dataset '{name}': {len(failures)} images cannot be decoded:\n  {shown}{more}"
            )
    return summary


def validated_boxes(name: str) -> GroundTruthBoxes:
    """The non-crowd boxes of dataset ``name`` as arrays (see :mod:`.box_sizes`).

    For datasets registered by this package, the validated ones. Datasets registered
    elsewhere (Detectron2's built-in COCO, ...) are used as they are, without opening
    their images; records without ``height``/``width`` are left out.
    """
    if name in _REGISTRATIONS:
        records, _ = _validated(name)
        return gather_boxes(records)
    _require_registered(name)
    return gather_boxes([r for r in DatasetCatalog.get(name) if "height" in r and "width" in r])


def check_data(
    names: str | Iterable[str],
    *,
    decode_images: bool = True,
    file: TextIO | None = None,
    cfg: CfgNode | None = None,
) -> list[DatasetSummary]:
    """Validate datasets and print a summary table for each; used by ``--check-data``.

    Args:
        names: one dataset name or several.
        decode_images: decode every image fully (see :func:`validate_dataset`).
        file: where the tables are printed; standard output by default.
        cfg: with a config, each table also gives per-class box sizes (min / median / max
            of sqrt(area)) after its test-time resize (``INPUT.MIN_SIZE_TEST`` /
            ``MAX_SIZE_TEST``).

    Returns:
        One :class:`DatasetSummary` per name, in order.
    """
    if isinstance(names, str):
        names = [names]
    out = file if file is not None else sys.stdout
    summaries = []
    for name in names:
        summary = validate_dataset(name, decode_images=decode_images)
        print(summary.table(), file=out)
        if cfg is not None:
            print(box_size_table(validated_boxes(name), summary.thing_classes,
                                 cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST), file=out)
        summaries.append(summary)
    return summaries


def dataset_classes(name: str) -> list[str]:
    """The class names of a registered dataset, loading it if they are not known yet."""
    _require_registered(name)
    thing_classes = MetadataCatalog.get(name).get("thing_classes")
    if thing_classes is None:
        DatasetCatalog.get(name)  # loaders set thing_classes as they load
        thing_classes = MetadataCatalog.get(name).get("thing_classes")
    if thing_classes is None:
        raise DatasetError(
            f"Dataset '{name}' has no 'thing_classes' in its metadata after loading; "
            "register it with class names."
        )
    return list(thing_classes)


def _describe_classes(classes: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(classes[:limit])
    more = f", ... ({len(classes) - limit} more)" if len(classes) > limit else ""
    return f"{len(classes)} classes: {shown}{more}"


def check_num_classes(cfg: CfgNode, dataset_names: Sequence[str] | None = None) -> list[str]:
    """Check that ``MODEL.RETINANET.NUM_CLASSES`` matches the datasets' classes.

    Args:
        cfg: the config to check.
        dataset_names: datasets to check; ``DATASETS.TRAIN + DATASETS.TEST`` by default.

    Returns:
        The datasets' common class names.

    Raises:
        ValueError: the datasets disagree on their classes, or ``NUM_CLASSES`` differs
            from their number; the message names the numbers, the datasets and the key.
    """
    if dataset_names is None:
        dataset_names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    dataset_names = list(dict.fromkeys(dataset_names))
    if not dataset_names:
        raise ValueError("No datasets to check: DATASETS.TRAIN and DATASETS.TEST are empty.")
    classes_by_name = {name: dataset_classes(name) for name in dataset_names}
    first_name, first_classes = next(iter(classes_by_name.items()))
    for name, classes in classes_by_name.items():
        if classes != first_classes:
            raise ValueError(
                f"Datasets '{first_name}' and '{name}' have different classes: "
                f"'{first_name}' has {_describe_classes(first_classes)}; '{name}' has "
                f"{_describe_classes(classes)}. "
                "Train and test datasets must use the same classes in the same order "
                "(pass class_names / a classes file to fix the order)."
            )
    num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
    if num_classes != len(first_classes):
        quoted = ", ".join(f"'{n}'" for n in dataset_names)
        raise ValueError(
            f"MODEL.RETINANET.NUM_CLASSES is {num_classes}, but dataset(s) {quoted} have "
            f"{_describe_classes(first_classes)}. Set "
            f"MODEL.RETINANET.NUM_CLASSES {len(first_classes)} in the config or on the "
            "command line."
        )
    return first_classes
