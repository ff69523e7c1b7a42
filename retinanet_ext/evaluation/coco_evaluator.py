"""COCO box evaluation of any registered dataset, as a Detectron2 ``DatasetEvaluator``.

Built from Detectron2's public parts (``instances_to_coco_json``, ``convert_to_coco_dict``,
``comm.gather``, ``create_small_table``) rather than by subclassing ``COCOEvaluator``, whose
private parts differ between v0.6 and current Detectron2. Outputs are a superset of
``COCOEvaluator``'s for boxes (same ``bbox`` dict, log tables and results file), plus:

* ``AP50-<class>`` beside ``AP-<class>``;
* a fast backend where one is installed (:mod:`retinanet_ext.evaluation.backends`);
* no detections reported in words with AP 0 (not NaN), and every NaN explained;
* per-class precision-recall curves (JSON + PNG) in the output folder.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections import OrderedDict
from typing import Any

import torch
from detectron2.data import MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table
from tabulate import tabulate

from retinanet_ext.data import DatasetError
from retinanet_ext.data.catalog import dropped_image_ids
from retinanet_ext.evaluation.backends import evaluate_boxes, resolve_backend
from retinanet_ext.evaluation.metrics import (
    SUMMARY_METRICS,
    per_class_metrics,
    summary_metrics,
    undefined_metric_notes,
)
from retinanet_ext.evaluation.score_probe import active_probe

__all__ = ["COCOBoxEvaluator", "load_coco_ground_truth"]

logger = logging.getLogger(__name__)

RESULTS_FILE = "coco_instances_results.json"  # the name Detectron2's COCOEvaluator writes


class COCOBoxEvaluator(DatasetEvaluator):
    """COCO box AP (AP, AP50, AP75, APs, APm, APl, per-class AP and AP50) for a dataset.

    ``evaluate()`` returns ``{"bbox": {...}}`` in percent, NaN only where the ground truth
    makes a metric undefined (e.g. APl with no large objects), and writes into
    ``output_dir`` (if given): ``coco_instances_results.json`` (COCO results format),
    ``pr_curves.json`` and ``pr_curves_iou50.png`` / ``pr_curves_iou50-95.png``.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | None = None,
        *,
        distributed: bool = True,
        backend: str | None = None,
        score_thresh: float | None = None,
        pr_curves: bool = True,
    ) -> None:
        """
        Args:
            dataset_name: a dataset registered in Detectron2's ``DatasetCatalog``, with
                ``json_file`` in its metadata or in Detectron2's standard format.
            output_dir: where the results file and the curves go; None writes nothing.
            distributed: gather the predictions of all processes; evaluate on the main one.
            backend: ``auto``, ``pycocotools``, ``faster-coco-eval`` or ``detectron2``;
                None reads ``$RETINANET_EXT_COCO_EVAL`` (default ``auto``).
            score_thresh: the model's test score threshold, quoted when nothing is
                detected (the model's own ``test_score_thresh`` is used when watched).
            pr_curves: write the precision-recall curves into ``output_dir``.

        Raises:
            EvaluationBackendError: ``backend`` unknown or not installed.
            DatasetError: the dataset's ``json_file`` is missing or not COCO JSON.
        """
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._backend = resolve_backend(backend)
        self._score_thresh = score_thresh
        self._pr_curves = pr_curves
        self._ground_truth = load_coco_ground_truth(dataset_name)
        metadata = MetadataCatalog.get(dataset_name)
        categories = sorted(self._ground_truth.get("categories", []), key=lambda c: c["id"])
        self._class_names = list(metadata.get("thing_classes", [c["name"] for c in categories]))
        to_contiguous = metadata.get("thing_dataset_id_to_contiguous_id", None)
        if to_contiguous:
            from_contiguous = {v: k for k, v in to_contiguous.items()}
            self._category_ids = [from_contiguous[k] for k in range(len(self._class_names))]
        else:  # Detectron2 numbers a COCO file's categories in the order of their ids
            self._category_ids = [c["id"] for c in categories]
        if len(self._category_ids) != len(self._class_names):
            raise DatasetError(
                f"dataset {dataset_name!r} has {len(self._class_names)} thing_classes but its "
                f"COCO ground truth has {len(self._category_ids)} categories")
        self.reset()

    def reset(self) -> None:
        self._predictions: list[dict[str, Any]] = []
        probe = active_probe()
        if probe is not None:
            probe.reset()

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Args: Detectron2's model inputs (with ``image_id``) and outputs (``instances``)."""
        for model_input, output in zip(inputs, outputs, strict=True):
            if "instances" not in output:
                continue
            instances = output["instances"].to(torch.device("cpu"))
            self._predictions.append({
                "image_id": model_input["image_id"],
                "instances": instances_to_coco_json(instances, model_input["image_id"]),
            })

    def evaluate(self) -> OrderedDict:
        predictions, highest_score = self._gather()
        if not comm.is_main_process():
            return OrderedDict()
        if not predictions:
            logger.warning("[COCOBoxEvaluator] received no predictions for %s: nothing to "
                           "evaluate", self._dataset_name)
            return OrderedDict()
        detections = self._to_dataset_ids(list(itertools.chain(*[p["instances"]
                                                                  for p in predictions])))
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, RESULTS_FILE)
            logger.info("Saving results to %s", path)
            with PathManager.open(path, "w") as f:
                f.write(json.dumps(detections))
        if "annotations" not in self._ground_truth:
            logger.info("Annotations are not available for evaluation.")
            return OrderedDict()
        if not detections:
            logger.warning(self._no_detections_message(len(predictions), highest_score))
        results = self._evaluate(detections, num_images=len(predictions))
        return OrderedDict(bbox=results)

    def _gather(self) -> tuple[list[dict], float | None]:
        """All processes' predictions and the highest score any of them saw (None: unknown)."""
        probe = active_probe()
        highest = probe.highest_score if probe is not None else None
        if not self._distributed:
            return self._predictions, highest
        comm.synchronize()
        predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
        seen = [h for h in comm.gather(highest, dst=0) if h is not None]
        return predictions, (max(seen) if seen else None)

    def _to_dataset_ids(self, detections: list[dict]) -> list[dict]:
        """Map contiguous class ids (the model's) to the dataset's category ids, in place."""
        num_classes = len(self._category_ids)
        for detection in detections:
            class_id = detection["category_id"]
            if not 0 <= class_id < num_classes:
                raise ValueError(
                    f"a prediction has class {class_id}, but dataset {self._dataset_name!r} "
                    f"has {num_classes} classes (0..{num_classes - 1}): does "
                    "MODEL.RETINANET.NUM_CLASSES match the dataset?"
                )
            detection["category_id"] = self._category_ids[class_id]
        return detections

    def _evaluate(self, detections: list[dict], num_images: int) -> dict[str, float]:
        started = time.perf_counter()
        evaluation = evaluate_boxes(self._ground_truth, detections, self._backend)
        logger.info("COCO box evaluation (%s) of %d detections on %d images took %.2f s",
                    evaluation.backend, len(detections), num_images,
                    time.perf_counter() - started)
        results = summary_metrics(evaluation)
        logger.info("Evaluation results for bbox: \n" + create_small_table(results))
        per_class = per_class_metrics(evaluation, self._class_names, self._category_ids)
        logger.info("Per-category bbox AP and AP50: \n" + self._per_class_table(per_class))
        results.update(per_class)
        for note in undefined_metric_notes(results, self._class_names):
            logger.info(note)
        if self._output_dir and self._pr_curves:
            from retinanet_ext.evaluation.pr_curves import write_pr_curves

            written = write_pr_curves(evaluation, self._class_names, self._category_ids,
                                      self._output_dir)
            logger.info("Precision-recall curves written to %s", ", ".join(written))
        return results

    def _per_class_table(self, per_class: dict[str, float]) -> str:
        rows = [(name, per_class[f"AP-{name}"], per_class[f"AP50-{name}"])
                for name in self._class_names]
        columns = min(2, len(rows))  # (category, AP, AP50) groups side by side
        flat = list(itertools.chain(*rows))
        table = itertools.zip_longest(*[flat[i::3 * columns] for i in range(3 * columns)])
        return tabulate(table, tablefmt="pipe", floatfmt=".3f",
                        headers=["category", "AP", "AP50"] * columns, numalign="left")

    def _no_detections_message(self, num_images: int, highest_score: float | None) -> str:
        probe = active_probe()
        threshold = probe.score_thresh if probe and probe.score_thresh is not None \
            else self._score_thresh
        threshold_words = f"the score threshold {threshold:g}" if threshold is not None \
            else "the model's score threshold"
        if highest_score is None:
            seen = "the highest score the model gave was not recorded"
        else:
            seen = f"the highest score the model gave was {highest_score:.4g}"
        return (
            f"No detections: the model found no box above {threshold_words} on any of the "
            f"{num_images} images of {self._dataset_name!r}; {seen}. Every metric below is "
            f"0 ({', '.join(SUMMARY_METRICS)} and per class), not NaN: train longer, check "
            "the weights, or lower MODEL.RETINANET.SCORE_THRESH_TEST."
        )


def load_coco_ground_truth(dataset_name: str) -> dict[str, Any]:
    """The dataset's ground truth as a COCO dict: its ``json_file``, or converted from the
    records in ``DatasetCatalog`` (Detectron2's ``convert_to_coco_dict``, in memory). Images
    dropped from the dataset (``DATALOADER.SKIP_BAD_IMAGES``) are left out of it.

    Raises:
        DatasetError: ``json_file`` is missing, not JSON, or not a COCO dataset dict.
    """
    json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
    if not json_file:
        return convert_to_coco_dict(dataset_name)
    try:
        with PathManager.open(PathManager.get_local_path(json_file)) as f:
            ground_truth = json.load(f)
    except (OSError, ValueError) as error:
        raise DatasetError(
            f"annotation file {json_file} of dataset {dataset_name!r} could not be read for "
            f"evaluation: {error}") from error
    if not isinstance(ground_truth, dict) or not isinstance(ground_truth.get("images"), list):
        raise DatasetError(f"annotation file {json_file} of dataset {dataset_name!r} is not "
                           "a COCO dataset (a JSON object with an 'images' list)")
    dropped = dropped_image_ids(dataset_name)
    if dropped:  # left out of the data (DATALOADER.SKIP_BAD_IMAGES): never seen, not missed
        ground_truth = {**ground_truth, "images": [
            i for i in ground_truth["images"] if i.get("id") not in dropped]}
        if "annotations" in ground_truth:
            ground_truth["annotations"] = [a for a in ground_truth["annotations"]
                                           if a.get("image_id") not in dropped]
    return ground_truth
