"""The fast COCO evaluation backends give pycocotools' numbers to 1e-4 on every metric.

Every metric: the 12 numbers of ``summarize()``, the full precision and recall arrays, and
the per-class AP and AP50 derived from them, on random sets (crowd boxes, images without
objects or without detections, score ties, classes without ground truth) and on coco128's
real ground truth with jittered detections.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from retinanet_ext import compat
from retinanet_ext.evaluation import (
    BACKEND_ENV_VAR,
    EvaluationBackendError,
    available_backends,
    evaluate_boxes,
    resolve_backend,
)
from retinanet_ext.evaluation.metrics import per_class_metrics, summary_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_coco_eval import jittered_detections, synthetic_ground_truth  # noqa: E402

TOLERANCE = 1e-4
FAST_BACKENDS = ("faster-coco-eval", "detectron2")


def require(backend: str) -> None:
    if backend not in available_backends():
        reason = {
            "detectron2": "detectron2._C is not compiled in this environment (PyPI route); "
                          "this runs in the source-built venv",
            "faster-coco-eval": "faster-coco-eval is not installed in this environment",
        }[backend]
        if backend == "faster-coco-eval":  # requirements/runtime.txt installs it
            pytest.fail(reason + " (requirements/runtime.txt installs it)")
        pytest.skip(reason)


def assert_same_numbers(reference, other, class_names, category_ids) -> None:
    np.testing.assert_allclose(other.stats, reference.stats, rtol=0, atol=TOLERANCE)
    assert other.precision.shape == reference.precision.shape
    np.testing.assert_allclose(other.precision, reference.precision, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(other.recall, reference.recall, rtol=0, atol=TOLERANCE)
    assert other.category_ids == reference.category_ids
    expected = {**summary_metrics(reference),
                **per_class_metrics(reference, class_names, category_ids)}
    got = {**summary_metrics(other), **per_class_metrics(other, class_names, category_ids)}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        # percentages: 1e-4 of a fraction is 1e-2 of a percent
        assert (math.isnan(value) and math.isnan(got[key])) or abs(got[key] - value) <= 1e-2, key


def random_set(seed: int) -> tuple[dict, list[dict]]:
    """Varied sets: few or many classes, crowd-heavy, many empty images, few detections."""
    rng = np.random.default_rng(seed)
    num_images, num_classes = [(40, 3), (60, 12), (30, 80), (50, 1), (80, 6)][seed]
    ground_truth = synthetic_ground_truth(
        num_images, num_classes, rng, objects_per_image=[3, 6, 2, 9, 4][seed],
        crowd_fraction=[0.05, 0.2, 0.1, 0.3, 0.0][seed],
        empty_fraction=[0.1, 0.3, 0.2, 0.05, 0.5][seed])
    detections = jittered_detections(
        ground_truth, rng, recall=[0.8, 0.5, 0.9, 0.7, 0.3][seed],
        false_positives_per_image=[5, 2, 20, 40, 1][seed])
    if seed == 2:  # a class with ground truth but no detection, and images without any
        detections = [d for d in detections if d["category_id"] != 1 and d["image_id"] % 4]
    return ground_truth, detections


def names_and_ids(ground_truth: dict) -> tuple[list[str], list[int]]:
    categories = sorted(ground_truth["categories"], key=lambda c: c["id"])
    return [c["name"] for c in categories], [c["id"] for c in categories]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_fast_backend_equals_pycocotools_on_random_sets(backend: str, seed: int) -> None:
    require(backend)
    ground_truth, detections = random_set(seed)
    assert any(a["iscrowd"] for a in ground_truth["annotations"]) or seed == 4
    reference = evaluate_boxes(ground_truth, detections, "pycocotools")
    other = evaluate_boxes(ground_truth, detections, backend)
    assert other.backend == backend
    assert reference.stats[0] > 0.01  # a set with something found, not all zeros
    assert_same_numbers(reference, other, *names_and_ids(ground_truth))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_fast_backend_equals_pycocotools_on_coco128(backend: str, datasets_root: Path) -> None:
    require(backend)
    json_file = datasets_root / "coco128" / "annotations" / "instances_train2017.json"
    ground_truth = json.loads(json_file.read_text())
    # The real quirks: crowd regions, images without annotations, 80 classes with 9 unused.
    annotated = {a["image_id"] for a in ground_truth["annotations"]}
    assert any(a["iscrowd"] for a in ground_truth["annotations"])
    assert any(image["id"] not in annotated for image in ground_truth["images"])
    detections = jittered_detections(ground_truth, np.random.default_rng(7))
    reference = evaluate_boxes(ground_truth, detections, "pycocotools")
    other = evaluate_boxes(ground_truth, detections, backend)
    assert_same_numbers(reference, other, *names_and_ids(ground_truth))
    assert 0.05 < reference.stats[0] < 0.9  # neither nothing found nor everything


@pytest.mark.parametrize("backend", ("pycocotools", *FAST_BACKENDS))
def test_no_detections_is_zero_where_defined_and_undefined_stays_nan(backend: str) -> None:
    require(backend) if backend != "pycocotools" else None
    ground_truth = {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "annotations": [  # one small and one medium object of class 1; class 2 unused
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
             "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500,
             "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    evaluation = evaluate_boxes(ground_truth, [], backend)
    metrics = {**summary_metrics(evaluation),
               **per_class_metrics(evaluation, ["a", "b"], [1, 2])}
    for key in ("AP", "AP50", "AP75", "APs", "APm", "AP-a", "AP50-a"):
        assert metrics[key] == 0.0, key
    for key in ("APl", "AP-b", "AP50-b"):  # no large object, no object of class b
        assert math.isnan(metrics[key]), key


def test_resolve_backend_reads_the_environment_variable(monkeypatch) -> None:
    monkeypatch.setenv(BACKEND_ENV_VAR, "PyCOCOtools")
    assert resolve_backend() == "pycocotools"
    assert resolve_backend("auto") == available_backends()[0]
    monkeypatch.delenv(BACKEND_ENV_VAR)
    assert resolve_backend() == available_backends()[0]


def test_auto_picks_the_fastest_backend_present() -> None:
    """faster-coco-eval, then Detectron2's compiled evaluator, then pycocotools."""
    if "faster-coco-eval" in available_backends():
        expected = "faster-coco-eval"
    else:
        expected = "detectron2" if compat.has_compiled_extension() else "pycocotools"
    assert resolve_backend("auto") == expected


def test_unknown_or_missing_backend_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv(BACKEND_ENV_VAR, "fastest")
    with pytest.raises(EvaluationBackendError, match=f"'fastest' \\(from {BACKEND_ENV_VAR}\\)"):
        resolve_backend()
    if not compat.has_compiled_extension():
        with pytest.raises(EvaluationBackendError, match="detectron2._C"):
            resolve_backend("detectron2")
