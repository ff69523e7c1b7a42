"""Registration plumbing shared by the format loaders, and the checks run on registered data.

A format module (:mod:`.coco`, :mod:`.voc`, :mod:`.csv_dataset`) describes a dataset by a
*raw loader*: a function returning ``(records, thing_classes, metadata)`` where records
are Detectron2 dataset dicts that have not been validated yet. :func:`register_validated`
puts it in Detectron2's ``DatasetCatalog``; on first use the raw loader runs, the records
go through :func:`.validation.validate_records`, and the result is cached, so warnings
are logged once and later ``DatasetCatalog.get`` calls are cheap.

Images that cannot be used (no image, undecodable; or over a config's pixel limit) stop
the run at the first ``DatasetCatalog.get`` or :func:`validate_dataset`, naming them,
unless :func:`validate_dataset` was told to drop them (``skip_bad_images``, the config's
``DATALOADER.SKIP_BAD_IMAGES``): then they are left out with their annotations, listed in
the summary's ``dropped_images``, and the evaluator leaves their ground truth out too
(:func:`dropped_image_ids`).
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from retinanet_ext.data.box_sizes import GroundTruthBoxes, box_size_table, gather_boxes
from retinanet_ext.data.formats import FORMAT_METADATA_KEY, get_format
from retinanet_ext.data.validation import (
    DatasetError,
    DatasetSummary,
    UnreadableImageError,
    decode_image,
    log_truncated,
    validate_records,
)
from retinanet_ext.structures import DEFAULT_MAX_IMAGE_PIXELS

logger = logging.getLogger("retinanet_ext.data")

RawLoader = Callable[[], tuple[list[dict[str, Any]], list[str], dict[str, Any]]]
"""Returns (unvalidated records, thing_classes, extra metadata set once loaded)."""


@dataclass
class _Registration:
    key: tuple
    source: str
    load_raw: RawLoader
    records: list[dict[str, Any]] | None = None
    summary: DatasetSummary | None = None
    fully_decoded: bool = False  # every image decoded once (validate_dataset's decode_images)
    image_ids: dict[str, Any] = field(default_factory=dict)  # file_name -> image_id, all
    dropped_ids: set = field(default_factory=set)  # image_id of the dropped records


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
        if registration.summary.bad_images:  # unless validate_dataset dropped them
            raise DatasetError(_unusable_message(name, registration.summary.bad_images))
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
        registration.image_ids = {str(r["file_name"]): r.get("image_id") for r in raw_records}
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


def validate_dataset(
    name: str,
    *,
    decode_images: bool = False,
    skip_bad_images: bool = False,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> DatasetSummary:
    """Load and validate dataset ``name`` now, and return its summary.

    For datasets registered by this package the result is the cached one (validation runs
    once). Any other registered Detectron2 dataset is validated too, as a report only:
    what it would clip and drop is counted, but its data is not changed.

    Args:
        name: a registered dataset name.
        decode_images: also decode every image fully, to find corrupt image bodies that
            the header and end checks miss (much slower: every pixel is decoded).
        skip_bad_images: drop the images that cannot be used (and those over
            ``max_pixels``) with their annotations, listed in the summary's
            ``dropped_images``, instead of raising; for this package's datasets, from then
            on.
        max_pixels: images declaring more pixels cannot be used; None: no limit.

    Raises:
        DatasetError: the dataset is not registered, an annotation is unusable, or an image
            is unusable and not dropped.
    """
    records, summary = _validated(name)
    registration = _REGISTRATIONS.get(name)
    if decode_images and not (registration and registration.fully_decoded):
        records = _decode_all(name, records, summary)
        if registration is not None:
            registration.records, registration.fully_decoded = records, True
    unusable = dict(summary.bad_images)
    unusable.update(_over_pixel_limit(records, max_pixels))
    if unusable and not skip_bad_images:
        raise DatasetError(_unusable_message(name, unusable))
    if unusable and registration is not None:
        _drop(registration, unusable)
    return summary


def _decode_all(name: str, records: list[dict[str, Any]],
                summary: DatasetSummary) -> list[dict[str, Any]]:
    """The records whose image decodes fully; the others go to ``summary.bad_images``,
    newly found truncated files to ``summary.truncated_images`` (one warning)."""
    kept, truncated = [], []
    for record in records:
        file_name = record["file_name"]
        try:
            if decode_image(file_name) and file_name not in summary.truncated_images:
                truncated.append(file_name)
        except UnreadableImageError as error:
            summary.bad_images[file_name] = str(error)
            summary.forget(record)
            continue
        kept.append(record)
    summary.truncated_images.extend(truncated)
    log_truncated(name, truncated)
    return kept


def _over_pixel_limit(records: list[dict[str, Any]], max_pixels: int | None) -> dict[str, str]:
    if not max_pixels:
        return {}
    return {
        record["file_name"]: (
            f"{record['width']}x{record['height']} = {record['width'] * record['height']:,} "
            f"pixels, over the limit of {max_pixels:,} (INPUT.MAX_IMAGE_PIXELS): refused "
            "before decoding, as a possible decompression bomb")
        for record in records
        if "width" in record and "height" in record
        and record["width"] * record["height"] > max_pixels
    }


def _drop(registration: _Registration, unusable: dict[str, str]) -> None:
    """Leave the unusable images of a registration out from now on, with their records."""
    summary = registration.summary
    for record in [r for r in registration.records if r["file_name"] in unusable]:
        summary.forget(record)
    registration.dropped_ids.update(registration.image_ids.get(f) for f in unusable)
    registration.records = [r for r in registration.records if r["file_name"] not in unusable]
    summary.dropped_images.update(unusable)
    summary.bad_images.clear()
    logger.warning("Dataset '%s': %d images dropped with their annotations "
                   "(DATALOADER.SKIP_BAD_IMAGES):\n%s", summary.name, len(unusable),
                   "\n".join(_describe_files(unusable)))


def dropped_image_ids(name: str) -> set:
    """The ``image_id`` of the images dropped from dataset ``name`` (see
    :func:`validate_dataset`'s ``skip_bad_images``): the evaluator leaves them out of the
    ground truth. Empty for datasets this package did not register."""
    registration = _REGISTRATIONS.get(name)
    return set(registration.dropped_ids) if registration else set()


def _describe_files(reasons: dict[str, str], limit: int = 10) -> list[str]:
    shown = [f"  {why}" if path in why else f"  {path}: {why}"
             for path, why in list(reasons.items())[:limit]]
    if len(reasons) > limit:
        shown.append(f"  ... and {len(reasons) - limit} more")
    return shown


def _unusable_message(name: str, unusable: dict[str, str]) -> str:
    return (f"Dataset '{name}': {len(unusable)} images cannot be used (not an image, cannot "
            "be decoded, or too large):\n" + "\n".join(_describe_files(unusable))
            + "\nReplace or remove them, or drop them with their annotations: train_net.py "
            "--skip-bad-images (DATALOADER.SKIP_BAD_IMAGES True).")


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
    skip_bad_images: bool | None = None,
) -> list[DatasetSummary]:
    """Validate datasets and print a summary table for each; used by ``--check-data``.

    Args:
        names: one dataset name or several.
        decode_images: decode every image fully (see :func:`validate_dataset`).
        file: where the tables are printed; standard output by default.
        cfg: with a config, each table also gives per-class box sizes (min / median / max
            of sqrt(area)) after its test-time resize (``INPUT.MIN_SIZE_TEST`` /
            ``MAX_SIZE_TEST``), images are checked against its ``INPUT.MAX_IMAGE_PIXELS``,
            and the splits' report follows (background images, images in both the training
            and the test sets: :func:`.split_checks.split_report`).
        skip_bad_images: drop unusable images instead of stopping (see
            :func:`validate_dataset`); by default the config's ``DATALOADER.SKIP_BAD_IMAGES``
            (False without a config).

    Returns:
        One :class:`DatasetSummary` per name, in order.
    """
    if isinstance(names, str):
        names = [names]
    out = file if file is not None else sys.stdout
    names = list(names)
    policy = image_policy(cfg)
    if skip_bad_images is not None:
        policy["skip_bad_images"] = skip_bad_images
    summaries = []
    for name in names:
        summary = validate_dataset(name, decode_images=decode_images, **policy)
        print(summary.table(), file=out)
        if cfg is not None:
            print(box_size_table(validated_boxes(name), summary.thing_classes,
                                 cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST), file=out)
        summaries.append(summary)
    if cfg is not None:  # of the datasets checked here
        from retinanet_ext.data.split_checks import split_report

        view = cfg.clone()
        view.defrost()
        view.DATASETS.TRAIN = [n for n in cfg.DATASETS.TRAIN if n in names]
        view.DATASETS.TEST = [n for n in cfg.DATASETS.TEST if n in names]
        print(split_report(view), file=out)
    return summaries


def image_policy(cfg: CfgNode | None) -> dict[str, Any]:
    """:func:`validate_dataset`'s ``skip_bad_images`` and ``max_pixels`` from a config's
    ``DATALOADER.SKIP_BAD_IMAGES`` and ``INPUT.MAX_IMAGE_PIXELS`` (0: no limit); the defaults
    without a config or where it lacks them."""
    if cfg is None:
        return {"skip_bad_images": False, "max_pixels": DEFAULT_MAX_IMAGE_PIXELS}
    return {"skip_bad_images": bool(cfg.DATALOADER.get("SKIP_BAD_IMAGES", False)),
            "max_pixels": cfg.INPUT.get("MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS) or None}


def cached_summary(name: str) -> DatasetSummary | None:
    """The summary of a dataset this package registered, if it has been loaded; else None."""
    registration = _REGISTRATIONS.get(name)
    return registration.summary if registration is not None else None


def prepare_dataset(name: str, cfg: CfgNode) -> DatasetSummary | None:
    """Apply a config's image policy (:func:`image_policy`) to a dataset this package
    registered, before anything loads it: unusable images stop the run here, or are dropped.
    None for a dataset registered elsewhere (Detectron2's built-in COCO, ...), left as it is."""
    if name not in _REGISTRATIONS:
        return None
    return validate_dataset(name, **image_policy(cfg))


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
