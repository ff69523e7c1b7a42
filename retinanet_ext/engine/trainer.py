"""The project's trainer: Detectron2's ``DefaultTrainer`` with a COCO evaluator for any dataset."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from typing import Any

from retinanet_ext import compat
from retinanet_ext.engine.metadata import attach_metadata

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or holds no weights of this model."""


class ProgressLoader:
    """Wraps a test data loader to log inference progress: at every 10% and at the end.

    Detectron2's ``inference_on_dataset`` logs only every 5 s after a warm-up, so a
    short evaluation shows nothing; this always shows where it is and the ETA.
    """

    def __init__(self, loader: Any, name: str) -> None:
        self.loader = loader
        self.name = name

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        total = len(self.loader)
        step = max(1, total // 10)
        started = time.perf_counter()
        for done, batch in enumerate(self.loader, start=1):
            yield batch
            if done % step == 0 or done == total:
                elapsed = time.perf_counter() - started
                eta = elapsed / done * (total - done)
                logger.info("Inference on %s: %d/%d images, %.1f s elapsed, ETA %.0f s",
                            self.name, done, total, elapsed, eta)


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` whose evaluator is the COCO evaluator, for any registered dataset.

    Uses Detectron2's fast evaluator where its compiled extension is installed and
    the official pycocotools one otherwise (same numbers, slower).
    """

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__(cfg)
        # Class names and input format travel in every checkpoint (engine/metadata.py).
        attach_metadata(self.checkpointer, cfg)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> ProgressLoader:
        return ProgressLoader(super().build_test_loader(cfg, dataset_name), dataset_name)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> COCOEvaluator:
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(
            dataset_name,
            output_dir=output_folder,
            use_fast_impl=compat.has_compiled_extension(),
        )


def load_weights(model: torch.nn.Module, weights: str) -> None:
    """Load ``weights`` into ``model``, failing clearly on a missing or corrupt file.

    A file that loads but matches none of the model's parameters is refused too: it
    would otherwise evaluate a randomly initialised model without a word.
    """
    if not weights:
        raise CheckpointError("MODEL.WEIGHTS is empty: give the checkpoint to evaluate")
    if "://" not in weights and not os.path.isfile(weights):
        raise CheckpointError(f"checkpoint {weights} does not exist")
    checkpointer = DetectionCheckpointer(model)
    try:
        checkpoint = checkpointer._load_file(weights)
    except Exception as error:  # torch/pickle raise many types for a damaged file
        raise CheckpointError(f"checkpoint {weights} could not be read: {error}") from error
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"checkpoint {weights} holds no model weights")
    model_keys = set(model.state_dict().keys())
    if checkpoint.get("matching_heuristics", False):
        matched = True  # Detectron2's .pkl model-zoo files are renamed on load
    else:
        matched = any(key in model_keys for key in state)
    if not matched:
        raise CheckpointError(
            f"checkpoint {weights} holds none of this model's parameters (e.g. it has "
            f"{sorted(state)[:3]}, the model wants {sorted(model_keys)[:3]})"
        )
    checkpointer._load_model(checkpoint)


def evaluate(cfg: CfgNode, model: torch.nn.Module) -> OrderedDict:
    """Run the COCO evaluation on ``cfg.DATASETS.TEST``; write the metrics to OUTPUT_DIR.

    The detections JSON is written by the evaluator under
    ``OUTPUT_DIR/inference/<dataset>/coco_instances_results.json``; the metrics
    (per dataset: AP, AP50, AP75, APs, APm, APl and AP-<class>) to
    ``OUTPUT_DIR/eval_metrics.json``. Inference logs its progress and ETA every 5 s.
    """
    results = Trainer.test(cfg, model)
    if comm.is_main_process():
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        path = os.path.join(cfg.OUTPUT_DIR, "eval_metrics.json")
        with open(path, "w") as f:
            json.dump(_to_builtin(results), f, indent=2)
        logger.info("Evaluation metrics written to %s", path)
    return results


def _to_builtin(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _to_builtin(v) for k, v in value.items()}
    if isinstance(value, float | int | str) or value is None:
        return value
    return float(value)
