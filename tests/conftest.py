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

# Two threads at most (tiny models); OMP_NUM_THREADS when set (./run test sets 1 per route
# when two routes run side by side).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))


def pytest_report_header(config) -> list[str]:
    """Which Detectron2 build the suite runs on (./run test runs it on each route)."""
    import sys

    from retinanet_ext import compat

    return [compat.describe_detectron2(), f"python: {sys.executable}"]


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``once`` run on one Detectron2 route of ``./run test`` (the default one):
    they walk through README's commands or smoke-test benchmarks, the same on every build,
    while the focused tests of each command's behaviour run on every route."""
    once_route = os.environ.get("RETINANET_EXT_ONCE_ROUTE", "")
    route = os.environ.get("RETINANET_EXT_ROUTE", "")
    if not once_route or not route or route == once_route:
        return
    skip = pytest.mark.skip(
        reason=f"route-independent walkthrough (marker 'once'): ./run test runs it on the "
        f"'{once_route}' route; RETINANET_EXT_ONCE_ROUTE= runs it on every route")
    for item in items:
        if "once" in item.keywords:
            item.add_marker(skip)


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
