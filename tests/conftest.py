"""Shared fixtures. ``retinanet_ext`` is imported first so its Detectron2 bridges apply."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import retinanet_ext  # noqa: F401  (registers components, applies compat bridges)
from retinanet_ext.data import unregister_dataset

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_report_header(config) -> list[str]:
    """Which Detectron2 build the suite runs on (./run test runs it on each route)."""
    import sys

    from retinanet_ext import compat

    return [compat.describe_detectron2(), f"python: {sys.executable}"]


def shared_datasets_root() -> Path:
    """Where the shared real datasets live: $RETINANET_EXT_DATASETS or ../shared/datasets."""
    return Path(os.environ.get("RETINANET_EXT_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    root = shared_datasets_root()
    if not root.is_dir():
        pytest.skip(f"shared datasets not found at {root} (set RETINANET_EXT_DATASETS)")
    return root


_dataset_counter = itertools.count()


@pytest.fixture
def new_name(request):
    """Makes unique dataset names and unregisters them after the test."""
    names = []

    def make(prefix: str = "ds") -> str:
        test = request.node.name.replace("[", "_").replace("]", "")
        name = f"test_{prefix}_{test}_{next(_dataset_counter)}"
        names.append(name)
        return name

    yield make
    for name in names:
        unregister_dataset(name)
