"""Dataset registration from one command-line string (``train_net.py --dataset SPEC``).

Grammar (fields are separated by ``:``, so paths must not contain one)::

    SPEC  := NAME "=" FORMAT ":" ARGS
    coco  : NAME=coco:JSON_FILE:IMAGE_ROOT
    voc   : NAME=voc:ROOT[:SPLIT]
            SPLIT := a name in ROOT/ImageSets/Main/ (train, val, ...)
                   | a path to a .txt file of image ids
                   | PART@NAME=FRACTION,NAME=FRACTION[,seed=SEED]   (a random split)
            no SPLIT: every XML file in the annotations folder
    csv   : NAME=csv:CSV_FILE[:CLASSES_FILE]

NAME is what goes in ``DATASETS.TRAIN`` / ``DATASETS.TEST``: letters, digits, ``_``,
``-`` and ``.``. Examples, with ``D=../shared/datasets``::

    bccd_train=voc:$D/bccd/BCCD:train
    coco128=coco:$D/coco128/annotations/instances_train2017.json:$D/coco128/train2017
    facemask_train=voc:$D/facemask/archive:train@train=0.8,val=0.2,seed=0
    facemask_val=voc:$D/facemask/archive:val@train=0.8,val=0.2,seed=0
    shapes=csv:data/boxes.csv:data/classes.txt
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from retinanet_ext.data.coco import register_coco_dataset
from retinanet_ext.data.csv_dataset import register_csv_dataset
from retinanet_ext.data.validation import DatasetError
from retinanet_ext.data.voc import register_voc_dataset

SPEC_GRAMMAR = (
    "NAME=coco:JSON_FILE:IMAGE_ROOT | NAME=voc:ROOT[:SPLIT] | NAME=csv:CSV_FILE[:CLASSES_FILE]"
)
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+$")
# format -> (required argument names, optional argument names)
_ARGUMENTS = {
    "coco": (("json_file", "image_root"), ()),
    "voc": (("root",), ("split",)),
    "csv": (("csv_file",), ("classes_file",)),
}


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed ``--dataset`` string: the name, the format, and its arguments by name."""

    name: str
    format: str
    arguments: dict[str, str]


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """Parse ``NAME=FORMAT:ARGS`` (see the module docstring for the grammar).

    Raises:
        DatasetError: the spec does not follow the grammar; the message shows the spec,
            what is wrong, and the grammar.
    """

    def bad(why: str) -> DatasetError:
        return DatasetError(f"Malformed dataset spec {spec!r}: {why}. Expected {SPEC_GRAMMAR}.")

    name, equals, rest = spec.partition("=")
    name = name.strip()
    if not equals:
        raise bad("no '=' between the dataset name and its format")
    if not _NAME_PATTERN.match(name):
        raise bad(f"the name {name!r} must be non-empty letters, digits, '_', '-' or '.'")
    data_format, colon, argument_text = rest.partition(":")
    data_format = data_format.strip().lower()
    if data_format not in _ARGUMENTS:
        raise bad(f"unknown format {data_format!r}; expected one of {sorted(_ARGUMENTS)}")
    if not colon or not argument_text:
        raise bad(f"format '{data_format}' needs arguments after ':'")
    values = argument_text.split(":")
    required, optional = _ARGUMENTS[data_format]
    if not len(required) <= len(values) <= len(required) + len(optional):
        expected = ":".join(a.upper() for a in required) + "".join(
            f"[:{a.upper()}]" for a in optional
        )
        raise bad(
            f"format '{data_format}' takes {expected}, found {len(values)} field(s) "
            f"{values} (paths must not contain ':')"
        )
    arguments = dict(zip(required + optional, values, strict=False))
    empty = [key for key, value in arguments.items() if not value.strip()]
    if empty:
        raise bad(f"empty {', '.join(empty)}")
    return DatasetSpec(name=name, format=data_format, arguments=arguments)


def register_dataset_spec(spec: str) -> str:
    """Register the dataset a ``--dataset`` spec describes; returns its name.

    Raises:
        DatasetError: the spec is malformed, or the files it names do not exist.
    """
    parsed = parse_dataset_spec(spec)
    arguments = parsed.arguments
    if parsed.format == "coco":
        return register_coco_dataset(parsed.name, arguments["json_file"], arguments["image_root"])
    if parsed.format == "voc":
        return register_voc_dataset(parsed.name, arguments["root"], arguments.get("split"))
    return register_csv_dataset(
        parsed.name, arguments["csv_file"], classes_file=arguments.get("classes_file")
    )
