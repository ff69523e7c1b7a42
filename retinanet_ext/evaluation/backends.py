"""COCO box evaluation backends: one call from ground truth + detections to COCO's arrays.

Three implementations of COCO's box AP give the same numbers (tests/test_evaluation_backends.py
checks them against pycocotools to 1e-4 on every metric):

* ``pycocotools``: the official COCO API, the reference; pure Python per image, slow.
* ``faster-coco-eval``: the PyPI package of that name (C++ matching and accumulation).
* ``detectron2``: Detectron2's ``COCOeval_opt``, where ``detectron2._C`` is compiled (its
  C++ does the matching; ground truth indexing and IoUs stay in pycocotools' Python).

``auto`` picks the first available of ``faster-coco-eval``, ``detectron2``, ``pycocotools``:
the order of their speed on a COCO-sized set (benchmarks/results/coco_eval_cpu_d2src.md).
The environment variable ``RETINANET_EXT_COCO_EVAL`` forces one (see :func:`resolve_backend`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from retinanet_ext import compat

__all__ = [
    "BACKENDS",
    "BACKEND_ENV_VAR",
    "BoxEvaluation",
    "EvaluationBackendError",
    "STAT_NAMES",
    "available_backends",
    "evaluate_boxes",
    "resolve_backend",
]

BACKEND_ENV_VAR = "RETINANET_EXT_COCO_EVAL"
BACKENDS = ("faster-coco-eval", "detectron2", "pycocotools")  # "auto" tries them in this order

# The 12 numbers of COCOeval.summarize(), in its order.
STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)


class EvaluationBackendError(ValueError):
    """An unknown COCO evaluation backend was asked for, or one that is not installed."""


@dataclass
class BoxEvaluation:
    """COCO's accumulated box evaluation, whichever backend computed it.

    Attributes:
        stats: float64[12], the numbers of ``COCOeval.summarize()`` (:data:`STAT_NAMES`) in
            [0, 1]; -1 where undefined (no ground truth of that kind).
        precision: float64[T, R, K, A, M]: T = 10 IoU thresholds 0.5:0.95, R = 101 recall
            thresholds 0:1, K = categories (in ``category_ids`` order), A = area ranges
            (all, small, medium, large), M = max detections (1, 10, 100); -1 where a
            category has no ground truth.
        recall: float64[T, K, A, M], -1 likewise.
        iou_thresholds: float64[T]; recall_thresholds: float64[R].
        category_ids: the dataset's category ids, sorted (COCOeval's order).
        backend: which implementation computed it.
    """

    stats: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    category_ids: list[int]
    backend: str


def available_backends() -> list[str]:
    """The backends that can run in this environment, in ``auto``'s order of preference."""
    present = {
        "faster-coco-eval": importlib.util.find_spec("faster_coco_eval") is not None,
        "detectron2": compat.has_compiled_extension(),
        "pycocotools": True,
    }
    return [name for name in BACKENDS if present[name]]


def resolve_backend(name: str | None = None) -> str:
    """The backend to use: ``name``, else ``$RETINANET_EXT_COCO_EVAL``, else ``auto``.

    Raises:
        EvaluationBackendError: the name is unknown, or names a backend not installed here.
    """
    source = "argument"
    if not name:
        name, source = os.environ.get(BACKEND_ENV_VAR, "") or "auto", BACKEND_ENV_VAR
    name = name.strip().lower().replace("_", "-")
    available = available_backends()
    if name == "auto":
        return available[0]
    if name not in BACKENDS:
        raise EvaluationBackendError(
            f"unknown COCO evaluation backend {name!r} (from {source}); expected one of "
            f"auto, {', '.join(BACKENDS)}"
        )
    if name not in available:
        why = {
            "detectron2": "needs Detectron2 built with its compiled extension detectron2._C",
            "faster-coco-eval": "needs `pip install faster-coco-eval`",
        }[name]
        raise EvaluationBackendError(
            f"COCO evaluation backend {name!r} (from {source}) is not available: it {why}; "
            f"available here: {', '.join(available)}"
        )
    return name


def evaluate_boxes(ground_truth: dict[str, Any], detections: list[dict[str, Any]],
                   backend: str = "auto") -> BoxEvaluation:
    """COCO box evaluation of ``detections`` against ``ground_truth``.

    Args:
        ground_truth: a COCO dataset dict (``images``, ``annotations``, ``categories``);
            boxes XYWH in pixels with ``area`` and ``iscrowd``. Not modified.
        detections: COCO results: dicts with ``image_id``, ``category_id`` (the dataset's
            ids), ``bbox`` (XYWH pixels) and ``score``. May be empty (AP 0 where the ground
            truth has objects). Not modified.
        backend: a name of :data:`BACKENDS` or ``auto``.

    Returns:
        The :class:`BoxEvaluation`; at most 100 detections per image count, as in COCO.
    """
    backend = resolve_backend(backend)
    runners: dict[str, Callable[..., Any]] = {
        "pycocotools": _run_pycocotools,
        "faster-coco-eval": _run_faster_coco_eval,
        "detectron2": _run_detectron2,
    }
    # The COCO APIs add keys to the dicts they are given (ignore, area, id, segmentation).
    ground_truth = {**ground_truth, "annotations": [dict(a) for a in ground_truth["annotations"]]}
    detections = [dict(d) for d in detections]
    with contextlib.redirect_stdout(io.StringIO()):  # the COCO APIs print their progress
        coco_eval = runners[backend](ground_truth, detections)
    params = coco_eval.params
    return BoxEvaluation(
        stats=np.asarray(coco_eval.stats[: len(STAT_NAMES)], dtype=np.float64),
        precision=np.asarray(coco_eval.eval["precision"], dtype=np.float64),
        recall=np.asarray(coco_eval.eval["recall"], dtype=np.float64),
        iou_thresholds=np.asarray(params.iouThrs, dtype=np.float64),
        recall_thresholds=np.asarray(params.recThrs, dtype=np.float64),
        category_ids=[int(c) for c in params.catIds],
        backend=backend,
    )


def _pycocotools_apis(ground_truth: dict, detections: list[dict]) -> tuple[Any, Any]:
    """pycocotools ``COCO`` objects of the ground truth and the detections.

    ``COCO.loadRes`` cannot take an empty list, so no detections become a results set
    with the ground truth's images and no annotations (AP 0 where there are objects).
    """
    from pycocotools.coco import COCO

    gt_api = COCO()
    gt_api.dataset = ground_truth
    gt_api.createIndex()
    if detections:
        return gt_api, gt_api.loadRes(detections)
    dt_api = COCO()
    dt_api.dataset = {"images": ground_truth["images"], "annotations": [],
                      "categories": ground_truth["categories"]}
    dt_api.createIndex()
    return gt_api, dt_api


def _summarized(coco_eval: Any) -> Any:
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


def _run_pycocotools(ground_truth: dict, detections: list[dict]) -> Any:
    from pycocotools.cocoeval import COCOeval

    return _summarized(COCOeval(*_pycocotools_apis(ground_truth, detections), "bbox"))


def _run_detectron2(ground_truth: dict, detections: list[dict]) -> Any:
    from detectron2.evaluation.fast_eval_api import COCOeval_opt

    return _summarized(COCOeval_opt(*_pycocotools_apis(ground_truth, detections), "bbox"))


def _run_faster_coco_eval(ground_truth: dict, detections: list[dict]) -> Any:
    from faster_coco_eval import COCO, COCOeval_faster

    gt_api = COCO(ground_truth)
    dt_api = gt_api.loadRes(detections)  # an empty list gives an empty, evaluable set
    return _summarized(COCOeval_faster(gt_api, dt_api, "bbox", print_function=_silent))


def _silent(*_args: Any, **_kwargs: Any) -> None:
    """faster-coco-eval's progress messages, dropped (pycocotools' are printed, then dropped)."""
