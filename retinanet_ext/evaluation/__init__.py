"""COCO box evaluation: the evaluator the Trainer uses, its fast backends, PR curves.

* :class:`COCOBoxEvaluator`: a Detectron2 ``DatasetEvaluator`` for any registered dataset.
* :func:`evaluate_boxes`: COCO ground truth + detections -> COCO's arrays, by a chosen
  backend (``$RETINANET_EXT_COCO_EVAL``: auto, detectron2, faster-coco-eval, pycocotools).
* :func:`watch_highest_score`: records the model's best score for the no-detections report.
"""

from retinanet_ext.evaluation.backends import (
    BACKEND_ENV_VAR,
    BACKENDS,
    BoxEvaluation,
    EvaluationBackendError,
    available_backends,
    evaluate_boxes,
    resolve_backend,
)
from retinanet_ext.evaluation.coco_evaluator import COCOBoxEvaluator, load_coco_ground_truth
from retinanet_ext.evaluation.score_probe import watch_highest_score

__all__ = [
    "BACKENDS",
    "BACKEND_ENV_VAR",
    "BoxEvaluation",
    "COCOBoxEvaluator",
    "EvaluationBackendError",
    "available_backends",
    "evaluate_boxes",
    "load_coco_ground_truth",
    "resolve_backend",
    "watch_highest_score",
]
