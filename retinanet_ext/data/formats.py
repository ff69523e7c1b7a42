"""The table of annotation formats: one entry per format, read by everything that needs one.

A :class:`DatasetFormat` names the format's register function (``register(name, **fields)
-> name``), the fields of its ``--dataset`` spec (positional or ``key=value``, required or
optional), a one-line example, and the metadata keys that hold the files and folders it
reads. The spec parser (:mod:`.spec`), ``train_net.py --help``, the README's table and the
engine's check that a dataset's files exist all read this table, so a format registered
here, from any module, is usable everywhere::

    register_format(DatasetFormat(
        name="mine", register=register_mine_dataset,
        fields=(SpecField("root", "ROOT", required=True),),
        example="pets=mine:data/pets", description="my own layout",
        path_keys=("dirname",),
    ))

Spec grammar: ``NAME=FORMAT:FIELD[:FIELD...]``. Positional fields come in the table's
order; any field may also be written ``key=value`` (after the positional ones), and some
only that way. Fields are separated by ``:``, so paths must not contain one; a path that
starts with ``word=`` must be written ``./word=...``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from detectron2.data import MetadataCatalog

from retinanet_ext.data.validation import DatasetError

__all__ = [
    "DATASET_FORMATS",
    "DatasetFormat",
    "DatasetSpec",
    "SpecField",
    "dataset_paths",
    "formats_help",
    "get_format",
    "parse_dataset_spec",
    "register_dataset_spec",
    "register_format",
    "spec_grammar",
]

FORMAT_METADATA_KEY = "dataset_format"
"""Metadata key every registration sets to its format's name (read by :func:`dataset_paths`)."""

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+$")
_KEY_VALUE_PATTERN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
# Where a dataset's files are when its format is not in the table (Detectron2's built-ins).
_GENERIC_PATH_KEYS = ("json_file", "image_root", "dirname", "csv_file")


@dataclass(frozen=True)
class SpecField:
    """One field of a format's spec.

    Attributes:
        name: the keyword argument of the format's register function.
        metavar: how the grammar shows the value, e.g. ``JSON_FILE``.
        required: the spec must give it.
        positional: it may be given by position; ``False``: only as ``key=value``.
        key: the key of its ``key=value`` form; default ``name``.
    """

    name: str
    metavar: str
    required: bool = False
    positional: bool = True
    key: str | None = None

    @property
    def spec_key(self) -> str:
        return self.key or self.name


@dataclass(frozen=True)
class DatasetFormat:
    """A format's entry in :data:`DATASET_FORMATS`.

    Attributes:
        name: the ``FORMAT`` of a spec (lower case).
        register: ``register(dataset_name, **fields) -> dataset_name``; raises
            :class:`DatasetError` for missing files.
        fields: the spec's fields; required positional ones first.
        example: a complete one-line spec, for help texts.
        description: one line: the layout this format reads.
        path_keys: metadata keys holding files or folders that must exist before training.
    """

    name: str
    register: Callable[..., str]
    fields: tuple[SpecField, ...]
    example: str
    description: str
    path_keys: tuple[str, ...] = ()

    @property
    def positional_fields(self) -> tuple[SpecField, ...]:
        return tuple(f for f in self.fields if f.positional)

    def grammar(self) -> str:
        """``NAME=voc:ROOT[:SPLIT][:annotations=DIR]``-style summary of the fields."""
        text = f"NAME={self.name}:"
        parts = []
        for index, spec_field in enumerate(self.fields):
            shown = spec_field.metavar if spec_field.positional else (
                f"{spec_field.spec_key}={spec_field.metavar}")
            separator = "" if index == 0 else ":"
            parts.append(f"{separator}{shown}" if spec_field.required else
                         f"[{separator}{shown}]")
        return text + "".join(parts)

    def positional_grammar(self) -> str:
        """Only the positional fields, e.g. ``CSV_FILE[:CLASSES_FILE]``."""
        positional = self.positional_fields
        return "".join(
            (("" if i == 0 else ":") + f.metavar) if f.required
            else f"[{'' if i == 0 else ':'}{f.metavar}]"
            for i, f in enumerate(positional)
        )


DATASET_FORMATS: dict[str, DatasetFormat] = {}
"""Format name -> entry. Filled by :func:`register_format` (the format modules call it)."""


def register_format(data_format: DatasetFormat, *, replace: bool = False) -> DatasetFormat:
    """Add a format to :data:`DATASET_FORMATS`.

    Raises:
        ValueError: the name is malformed or taken (unless ``replace``), or its fields
            are inconsistent (a required field after an optional positional one, or two
            fields with one key).
    """
    name = data_format.name
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"A format name must be lower-case letters, digits or '_': {name!r}.")
    if name in DATASET_FORMATS and not replace:
        raise ValueError(f"Dataset format '{name}' is already registered.")
    keys = [f.spec_key for f in data_format.fields]
    if len(set(keys)) != len(keys):
        raise ValueError(f"Dataset format '{name}': two fields share a key: {keys}.")
    seen_optional = False
    for spec_field in data_format.positional_fields:
        if spec_field.required and seen_optional:
            raise ValueError(
                f"Dataset format '{name}': required field '{spec_field.name}' follows an "
                "optional positional field."
            )
        seen_optional = seen_optional or not spec_field.required
    DATASET_FORMATS[name] = data_format
    return data_format


def unregister_format(name: str) -> None:
    """Remove a format from the table (for tests)."""
    DATASET_FORMATS.pop(name, None)


def get_format(name: str) -> DatasetFormat:
    """The entry of format ``name``; :class:`DatasetError` naming the known ones if absent."""
    _load_builtin_formats()
    if name not in DATASET_FORMATS:
        raise DatasetError(
            f"Unknown dataset format {name!r}; expected one of {sorted(DATASET_FORMATS)}."
        )
    return DATASET_FORMATS[name]


def _load_builtin_formats() -> None:
    # The format modules register themselves on import; importing the package imports them.
    import retinanet_ext.data  # noqa: F401


def spec_grammar() -> str:
    """Every format's grammar, ``" | "``-separated."""
    _load_builtin_formats()
    return " | ".join(f.grammar() for f in DATASET_FORMATS.values())


def formats_help() -> str:
    """One line per format (description and example), for ``--help`` texts."""
    _load_builtin_formats()
    return "; ".join(
        f"{f.name}: {f.description}, e.g. {f.example}" for f in DATASET_FORMATS.values()
    )


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed ``--dataset`` string: the name, the format, and its fields by name."""

    name: str
    format: str
    arguments: dict[str, str]


def _split_fields(
    data_format: DatasetFormat, values: list[str], bad: Callable[[str], DatasetError]
) -> dict[str, str]:
    """Positional values and ``key=value`` values -> {field name: value}."""
    by_key = {f.spec_key: f for f in data_format.fields}
    positional_values, keyword_values = [], {}
    for value in values:
        match = _KEY_VALUE_PATTERN.match(value)
        if match is None:
            if keyword_values:
                raise bad(f"positional field {value!r} after a key=value field")
            positional_values.append(value)
            continue
        key, text = match.groups()
        if key not in by_key:
            raise bad(
                f"format '{data_format.name}' has no field '{key}' (its fields: "
                f"{', '.join(by_key)}); a path that starts with '{key}=' must be written "
                f"'./{value}'"
            )
        if by_key[key].name in keyword_values:
            raise bad(f"field '{key}' is given twice")
        keyword_values[by_key[key].name] = text
    positional = data_format.positional_fields
    if len(positional_values) > len(positional):
        raise bad(_count_message(data_format, positional_values))
    arguments = dict(zip((f.name for f in positional), positional_values, strict=False))
    for name, text in keyword_values.items():
        if name in arguments:
            raise bad(f"field '{name}' is given by position and as key=value")
        arguments[name] = text
    missing = [f for f in data_format.fields if f.required and f.name not in arguments]
    if missing and len(positional_values) < len(positional):
        raise bad(_count_message(data_format, positional_values))
    if missing:
        raise bad(f"missing {', '.join(f.spec_key for f in missing)}")
    return arguments


def _count_message(data_format: DatasetFormat, values: list[str]) -> str:
    keyword = [f for f in data_format.fields if not f.positional]
    optional = (
        "; optional key=value fields: " + ", ".join(f"{f.spec_key}={f.metavar}" for f in keyword)
        if keyword else ""
    )
    return (
        f"format '{data_format.name}' takes {data_format.positional_grammar()}, found "
        f"{len(values)} field(s) {values} (paths must not contain ':'){optional}"
    )


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """Parse ``NAME=FORMAT:FIELD[:FIELD...]`` (see the module docstring).

    Raises:
        DatasetError: the spec does not follow the grammar; the message shows the spec,
            what is wrong, and the grammar.
    """

    def bad(why: str) -> DatasetError:
        return DatasetError(
            f"Malformed dataset spec {spec!r}: {why}. Expected {spec_grammar()}."
        )

    _load_builtin_formats()
    name, equals, rest = spec.partition("=")
    name = name.strip()
    if not equals:
        raise bad("no '=' between the dataset name and its format")
    if not _NAME_PATTERN.match(name):
        raise bad(f"the name {name!r} must be non-empty letters, digits, '_', '-' or '.'")
    format_name, colon, field_text = rest.partition(":")
    format_name = format_name.strip().lower()
    if format_name not in DATASET_FORMATS:
        raise bad(f"unknown format {format_name!r}; expected one of {sorted(DATASET_FORMATS)}")
    if not colon or not field_text:
        raise bad(f"format '{format_name}' needs arguments after ':'")
    arguments = _split_fields(DATASET_FORMATS[format_name], field_text.split(":"), bad)
    empty = [key for key, value in arguments.items() if not value.strip()]
    if empty:
        raise bad(f"empty {', '.join(empty)}")
    return DatasetSpec(name=name, format=format_name, arguments=arguments)


def register_dataset_spec(spec: str) -> str:
    """Register the dataset a ``--dataset`` spec describes; returns its name.

    Raises:
        DatasetError: the spec is malformed, or the files it names do not exist.
    """
    parsed = parse_dataset_spec(spec)
    return DATASET_FORMATS[parsed.format].register(parsed.name, **parsed.arguments)


def dataset_paths(name: str) -> list[tuple[str, str]]:
    """(what, path) pairs of the files and folders a registered dataset reads.

    Taken from the dataset's metadata, at the keys its format's entry names; datasets
    registered otherwise (Detectron2's built-ins) use ``json_file``, ``image_root``,
    ``dirname`` and ``csv_file``.
    """
    metadata = MetadataCatalog.get(name)
    data_format = DATASET_FORMATS.get(metadata.get(FORMAT_METADATA_KEY, None) or "")
    keys: Iterable[str] = data_format.path_keys if data_format else _GENERIC_PATH_KEYS
    paths = []
    for key in keys:
        value = metadata.get(key, None)
        if isinstance(value, str) and value:
            paths.append((key, value))
    return paths
