"""Shared fixtures. ``import retinanet_ext`` registers the components the tests build."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import torch

import retinanet_ext  # noqa: F401  (registers the components)
from retinanet_ext.data import unregister_dataset

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
    """Tests marked ``once`` run on one Detectron2 route of ``./run test``: they walk through
    the documented commands (README.md, docs/) or smoke-test benchmarks, the same on every
    build, while the focused tests of each command's behaviour run on every route.
    ``RETINANET_EXT_ONCE_ROUTE`` names the route(s) they run on; with two (``default,wheel``,
    when both routes run side by side) they are dealt out in turn, in the order of their
    names, to balance the two runs."""
    once_routes = [r for r in os.environ.get("RETINANET_EXT_ONCE_ROUTE", "").split(",") if r]
    route = os.environ.get("RETINANET_EXT_ROUTE", "")
    if not once_routes or not route:
        return
    once = sorted((item for item in items if "once" in item.keywords), key=lambda i: i.nodeid)
    for index, item in enumerate(once):
        owner = once_routes[index % len(once_routes)]
        if owner != route:
            item.add_marker(pytest.mark.skip(
                reason=f"route-independent walkthrough (marker 'once'): ./run test runs it on "
                f"the '{owner}' route; RETINANET_EXT_ONCE_ROUTE= runs it on every route"))


def shared_datasets_root() -> Path:
    """Where the shared real datasets live: $RETINANET_EXT_DATASETS or ../shared/datasets."""
    return Path(os.environ.get("RETINANET_EXT_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    root = shared_datasets_root()
    if not root.is_dir():
        # ../shared is not part of the project: a developer may lack it, CI must have it.
        message = f"shared datasets not found at {root} (set RETINANET_EXT_DATASETS)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
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
