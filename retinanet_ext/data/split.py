"""Reproducible random splits, for datasets that ship without one (facemask).

``make_split(ids, {"train": 0.8, "val": 0.2}, seed=0)`` sorts the ids, shuffles them
with ``random.Random(seed)`` and cuts the shuffled list at the cumulative fractions, so
the same ids, fractions and seed always give the same split, on any machine and Python
version (``random.Random.shuffle`` with an integer seed is stable across versions).

The same split can be written as a string, for ``register_voc_dataset(split=...)`` and
``--dataset`` specs: ``PART@NAME=FRACTION,NAME=FRACTION[,seed=SEED]``, e.g.
``train@train=0.8,val=0.2,seed=0`` is the ``train`` part of that split (seed 0 if not
given).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from retinanet_ext.data.validation import DatasetError

RANDOM_SPLIT_GRAMMAR = "PART@NAME=FRACTION,NAME=FRACTION[,seed=SEED]"


def make_split(
    ids: Iterable[str], fractions: Mapping[str, float], seed: int = 0
) -> dict[str, list[str]]:
    """Split ``ids`` at random, reproducibly, into named parts of the given fractions.

    Args:
        ids: the items to split (e.g. VOC image ids); duplicates are an error.
        fractions: part name -> fraction, each in (0, 1], summing to at most 1 (a sum
            below 1 leaves the rest out, e.g. for a small subset).
        seed: the shuffle's seed; write it down with the results.

    Returns:
        Part name -> sorted ids, in the order of ``fractions``. Part sizes are
        ``round(cumulative fraction * len(ids))`` differences, so they add up exactly.

    Raises:
        DatasetError: a fraction is out of range, they sum to more than 1, or ids repeat.
    """
    ordered = sorted(ids)
    if len(set(ordered)) != len(ordered):
        raise DatasetError("make_split: the ids to split contain duplicates.")
    if not fractions:
        raise DatasetError("make_split: expected at least one part, got no fractions.")
    for part, fraction in fractions.items():
        if not 0 < fraction <= 1:
            raise DatasetError(
                f"make_split: fraction for '{part}' must be in (0, 1], got {fraction}."
            )
    total = sum(fractions.values())
    if total > 1 + 1e-9:
        raise DatasetError(
            f"make_split: fractions {dict(fractions)} sum to {total:g}; expected at most 1."
        )
    random.Random(seed).shuffle(ordered)
    parts: dict[str, list[str]] = {}
    cumulative, start = 0.0, 0
    for part, fraction in fractions.items():
        cumulative += fraction
        end = min(round(cumulative * len(ordered)), len(ordered))
        parts[part] = sorted(ordered[start:end])
        start = end
    return parts


@dataclass(frozen=True)
class RandomSplit:
    """A parsed ``PART@NAME=FRACTION,...[,seed=SEED]`` string."""

    part: str
    fractions: dict[str, float]
    seed: int

    def select(self, ids: Iterable[str]) -> list[str]:
        """The ids of :attr:`part`."""
        return make_split(ids, self.fractions, self.seed)[self.part]


def parse_random_split(text: str) -> RandomSplit | None:
    """Parse ``PART@NAME=FRACTION,...[,seed=SEED]``; ``None`` if ``text`` has no ``@``.

    Raises:
        DatasetError: ``text`` has an ``@`` but does not follow the grammar.
    """
    if "@" not in text:
        return None
    part, _, body = text.partition("@")
    fractions: dict[str, float] = {}
    seed = 0

    def bad(why: str) -> DatasetError:
        return DatasetError(
            f"Malformed random split '{text}': {why}. Expected {RANDOM_SPLIT_GRAMMAR}, "
            "e.g. 'train@train=0.8,val=0.2,seed=0'."
        )

    for item in body.split(","):
        key, equals, value = item.strip().partition("=")
        if not equals or not key or not value:
            raise bad(f"'{item}' is not NAME=VALUE")
        try:
            if key == "seed":
                seed = int(value)
            else:
                fractions[key] = float(value)
        except ValueError as error:
            raise bad(f"'{value}' is not a number") from error
    if not part:
        raise bad("the PART before '@' is empty")
    if part not in fractions:
        raise bad(f"part '{part}' is not one of the split's parts {list(fractions)}")
    make_split([], fractions, seed)  # checks the fractions
    return RandomSplit(part=part, fractions=fractions, seed=seed)
