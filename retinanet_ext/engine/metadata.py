"""What travels with a trained model: class names, input format, the datasets it saw.

The project's :class:`~retinanet_ext.engine.Trainer` registers a :class:`ModelMetadata` as
a checkpointable, so every checkpoint it writes carries, under :data:`METADATA_KEY`::

    {"thing_classes": ["RBC", "WBC", ...], "input_format": "BGR",
     "datasets": ["bccd_train"], "version": 1}

and a checkpoint of a custom dataset predicts class names in a process where that
dataset is not registered. A checkpoint without it (Detectron2's own, or an older one)
falls back to the config's test dataset's metadata, else to ``class_<id>`` names, with a
warning (:func:`resolve_metadata`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

__all__ = [
    "METADATA_KEY",
    "METADATA_VERSION",
    "ModelMetadata",
    "attach_metadata",
    "resolve_metadata",
]

logger = logging.getLogger(__name__)

#: Key of the metadata entry in checkpoints written by the project's Trainer.
METADATA_KEY = "retinanet_ext_metadata"
#: Format version of that entry; bumped when a field changes meaning.
METADATA_VERSION = 1


@dataclass
class ModelMetadata:
    """Class names and input conventions of a model, saved inside its checkpoints.

    Has ``state_dict()`` / ``load_state_dict()``, so Detectron2's checkpointer saves and
    restores it like the optimizer or the scheduler.
    """

    thing_classes: list[str] = field(default_factory=list)
    input_format: str = "BGR"
    datasets: list[str] = field(default_factory=list)
    version: int = METADATA_VERSION

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the fields with ``state`` (as written by :meth:`state_dict`).

        Raises:
            ValueError: ``state`` is not such a mapping (names the offending field).
        """
        loaded = ModelMetadata.from_dict(state)
        self.thing_classes = loaded.thing_classes
        self.input_format = loaded.input_format
        self.datasets = loaded.datasets
        self.version = loaded.version

    @classmethod
    def from_dict(cls, state: Any) -> ModelMetadata:
        """Checked construction from a checkpoint entry (plain types only)."""
        if not isinstance(state, Mapping):
            raise ValueError(f"{METADATA_KEY} must be a dict, found {type(state).__name__}")
        classes = state.get("thing_classes", [])
        datasets = state.get("datasets", [])
        input_format = state.get("input_format", "BGR")
        if not isinstance(classes, Sequence) or not all(isinstance(c, str) for c in classes):
            raise ValueError(f"{METADATA_KEY}['thing_classes'] must be a list of strings")
        if not isinstance(datasets, Sequence) or not all(isinstance(d, str) for d in datasets):
            raise ValueError(f"{METADATA_KEY}['datasets'] must be a list of strings")
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"{METADATA_KEY}['input_format'] must be BGR or RGB, "
                             f"found {input_format!r}")
        return cls(list(classes), input_format, list(datasets),
                   int(state.get("version", METADATA_VERSION)))

    @classmethod
    def from_config(cls, cfg: CfgNode) -> ModelMetadata:
        """The training datasets' class names (from Detectron2's ``MetadataCatalog``)."""
        datasets = list(cfg.DATASETS.TRAIN)
        classes: list[str] = []
        for name in datasets:
            found = MetadataCatalog.get(name).get("thing_classes", None)
            if found:
                classes = list(found)
                break
        if not classes and datasets:
            logger.warning("No class names known for %s: checkpoints will carry none", datasets)
        return cls(classes, cfg.INPUT.FORMAT, datasets)

    def class_names(self, num_classes: int) -> list[str]:
        """``num_classes`` names: the saved ones, ``class_<id>`` for any that are missing."""
        names = list(self.thing_classes[:num_classes])
        return names + [f"class_{i}" for i in range(len(names), num_classes)]


def attach_metadata(checkpointer: Any, cfg: CfgNode) -> ModelMetadata:
    """Register the training data's :class:`ModelMetadata` on ``checkpointer``.

    Call after the training data loader is built (that is when Detectron2 learns the class
    names of lazily loaded datasets). Every checkpoint saved afterwards carries it.
    """
    metadata = ModelMetadata.from_config(cfg)
    checkpointer.checkpointables[METADATA_KEY] = metadata
    return metadata


def _test_dataset_metadata(cfg: CfgNode) -> ModelMetadata | None:
    """The class names of the first registered ``DATASETS.TEST`` dataset, if any."""
    from detectron2.data import DatasetCatalog

    from retinanet_ext.data import dataset_classes

    for name in cfg.DATASETS.TEST:
        if name not in DatasetCatalog.list():
            continue
        try:
            classes = dataset_classes(name)
        except Exception as error:  # an unreadable dataset only loses the fallback
            logger.warning("Dataset '%s' gave no class names: %s", name, error)
            continue
        return ModelMetadata(list(classes), cfg.INPUT.FORMAT, [name])
    return None


def resolve_metadata(
    cfg: CfgNode, checkpoint_entries: Mapping[str, Any] | None, source: str
) -> ModelMetadata:
    """The metadata of a loaded checkpoint, with the documented fallbacks.

    Args:
        cfg: the model's config (``DATASETS.TEST``, ``INPUT.FORMAT``, ``NUM_CLASSES``).
        checkpoint_entries: what ``load_weights`` returned besides the weights (None when
            it returned nothing).
        source: the checkpoint's path, for the warnings.

    Returns:
        The checkpoint's :data:`METADATA_KEY` entry if present and well formed; else the
        first registered ``DATASETS.TEST`` dataset's class names; else no names (so
        :meth:`ModelMetadata.class_names` gives ``class_<id>``). Each fallback logs a warning.
    """
    num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
    entry = (checkpoint_entries or {}).get(METADATA_KEY)
    if entry is not None:
        try:
            metadata = ModelMetadata.from_dict(entry)
        except ValueError as error:
            logger.warning("Checkpoint %s: ignoring malformed metadata (%s)", source, error)
        else:
            if len(metadata.thing_classes) != num_classes:
                logger.warning(
                    "Checkpoint %s names %d classes but MODEL.RETINANET.NUM_CLASSES is %d",
                    source, len(metadata.thing_classes), num_classes)
            return metadata
    fallback = _test_dataset_metadata(cfg)
    if fallback is not None:
        logger.warning("Checkpoint %s carries no class names; using those of dataset '%s'",
                       source, fallback.datasets[0])
        return fallback
    logger.warning("Checkpoint %s carries no class names and no DATASETS.TEST dataset is "
                   "registered: classes are named class_0 .. class_%d", source, num_classes - 1)
    return ModelMetadata([], cfg.INPUT.FORMAT, [])
