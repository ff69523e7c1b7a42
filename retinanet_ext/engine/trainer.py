"""The project's trainer: Detectron2's ``DefaultTrainer`` with a COCO evaluator for any dataset,
safe and crash-proof checkpoints (:mod:`retinanet_ext.checkpoint`) and a NaN/Inf guard
(:mod:`retinanet_ext.engine.guard`)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, TrainerBase
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from retinanet_ext.checkpoint import CheckpointError, RetinaNetExtCheckpointer, load_weights
from retinanet_ext.data.mapper import ImageDatasetMapper
from retinanet_ext.data.split_checks import training_dataset_dicts
from retinanet_ext.engine.config_checks import ConfigError, check_config
from retinanet_ext.engine.dataset_checks import prepare_datasets
from retinanet_ext.engine.ema import add_ema_hooks
from retinanet_ext.engine.guard import NonFiniteGuard, quiet_divergence_traceback
from retinanet_ext.engine.metadata import attach_metadata
from retinanet_ext.evaluation import COCOBoxEvaluator, EvaluationBackendError, watch_highest_score
from retinanet_ext.modeling.precision import resolve_precision

logger = logging.getLogger(__name__)

__all__ = ["CheckpointError", "ProgressLoader", "Trainer", "evaluate", "load_weights",
           "with_gradient_scaler"]


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

    The evaluator is :class:`~retinanet_ext.evaluation.COCOBoxEvaluator`: pycocotools'
    numbers from the fastest backend installed (``$RETINANET_EXT_COCO_EVAL`` forces one),
    per-class AP50 and precision-recall curves, and no detections reported in words.

    Images are read as the Predictor reads them, unusable ones refused or dropped at start
    (:meth:`build_train_loader`, :meth:`build_test_loader`). Also: the config is checked
    before anything is built; checkpoints are read safely and
    written atomically by :class:`~retinanet_ext.checkpoint.RetinaNetExtCheckpointer`
    (``--resume`` skips a damaged newest one; ``MODEL.RETINANET_EXT.CHECKPOINT_MAX_TO_KEEP``);
    a NaN/Inf loss or gradient stops training with
    :class:`~retinanet_ext.engine.guard.TrainingDivergedError`.
    """

    def __init__(self, cfg: CfgNode) -> None:
        self.ema_eval_results: OrderedDict | None = None  # set by the EMA's evaluation
        check_config(cfg)
        super().__init__(with_gradient_scaler(cfg))
        # Class names and input format travel in every checkpoint (engine/metadata.py).
        attach_metadata(self.checkpointer, cfg)
        self.register_hooks([NonFiniteGuard(
            self.checkpointer.model, self.scheduler.optimizer,
            cfg.SOLVER.BASE_LR, cfg.SOLVER.IMS_PER_BATCH)])

    def build_hooks(self) -> list:
        """Detectron2's hooks, around the project's checkpointer.

        ``DefaultTrainer.__init__`` creates its checkpointer just before it builds the hooks;
        here it is replaced (same model, folder and checkpointables) before the
        ``PeriodicCheckpointer`` hook takes it.
        """
        ext = self.cfg.MODEL.RETINANET_EXT
        if not isinstance(self.checkpointer, RetinaNetExtCheckpointer):
            self.checkpointer = RetinaNetExtCheckpointer.replacing(
                self.checkpointer, max_to_keep=ext.CHECKPOINT_MAX_TO_KEEP)
        hook_list = super().build_hooks()
        if ext.EMA.ENABLED:  # evaluate an EMA of the weights (engine/ema.py)
            hook_list = add_ema_hooks(self, hook_list)
        return hook_list

    def train(self) -> OrderedDict | None:
        """Detectron2's training loop; a divergence is logged in one line, not a traceback.

        With the EMA on, the EMA's evaluation replaces Detectron2's, so
        ``TEST.EXPECTED_RESULTS`` is checked against its results (``ema_eval_results``), as
        ``DefaultTrainer.train`` checks its own.
        """
        with quiet_divergence_traceback():
            if not self.cfg.MODEL.RETINANET_EXT.EMA.ENABLED:
                return super().train()
            TrainerBase.train(self, self.start_iter, self.max_iter)
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            if self.ema_eval_results is None:
                raise ConfigError("TEST.EXPECTED_RESULTS is set, but no evaluation ran during "
                                  "training (TEST.EVAL_PERIOD)")
            verify_results(self.cfg, self.ema_eval_results)
            return self.ema_eval_results
        return None

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Any:
        """Detectron2's training loader, its images read by
        :class:`~retinanet_ext.data.mapper.ImageDatasetMapper` (every common kind, truncated
        files, ``INPUT.MAX_IMAGE_PIXELS``), unusable images stopping the run or dropped
        (``DATALOADER.SKIP_BAD_IMAGES``) and ``DATALOADER.BACKGROUND_SHARE`` of the images
        without boxes (:func:`~retinanet_ext.data.split_checks.training_dataset_dicts`)."""
        prepare_datasets(cfg, cfg.DATASETS.TRAIN)
        return build_detection_train_loader(cfg, mapper=ImageDatasetMapper(cfg, is_train=True),
                                            dataset=training_dataset_dicts(cfg))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> ProgressLoader:
        """Detectron2's test loader with the training loader's image reading and policy."""
        prepare_datasets(cfg, [dataset_name])
        loader = build_detection_test_loader(
            cfg, dataset_name, mapper=ImageDatasetMapper(cfg, is_train=False))
        return ProgressLoader(loader, dataset_name)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> COCOBoxEvaluator:
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        try:
            return COCOBoxEvaluator(dataset_name, output_dir=output_folder,
                                    score_thresh=cfg.MODEL.RETINANET.SCORE_THRESH_TEST)
        except EvaluationBackendError as error:
            raise ConfigError(str(error)) from error

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators: Any = None) -> OrderedDict:
        """Detectron2's ``test``, recording the model's highest score for the evaluator's
        no-detections report (:func:`~retinanet_ext.evaluation.watch_highest_score`)."""
        with watch_highest_score(model):
            return super().test(cfg, model, evaluators)


def with_gradient_scaler(cfg: CfgNode) -> CfgNode:
    """``cfg`` with ``SOLVER.AMP.ENABLED`` on where the network trains in float16 on CUDA.

    float16 gradients underflow without a loss scaler; Detectron2's ``AMPTrainer`` (chosen by
    ``SOLVER.AMP.ENABLED``) brings one (``GradScaler``) on both Detectron2 versions. bfloat16
    needs none (float32's exponent range) and float32 none at all, so only
    ``MODEL.RETINANET_EXT.PRECISION`` float16 (or auto resolving to it) on CUDA switches it on.
    Detectron2 picks its trainer from the config, before our model exists to say its dtype:
    hence :func:`~retinanet_ext.modeling.precision.resolve_precision` here too, on CUDA only.
    """
    if cfg.MODEL.META_ARCHITECTURE != "RetinaNetExt" or cfg.SOLVER.AMP.ENABLED:
        return cfg
    if torch.device(cfg.MODEL.DEVICE).type != "cuda" or resolve_precision(
            cfg.MODEL.RETINANET_EXT.PRECISION, cfg.MODEL.DEVICE) != torch.float16:
        return cfg
    logger.info("MODEL.RETINANET_EXT.PRECISION %s on CUDA trains in float16: SOLVER.AMP.ENABLED "
                "set to True (Detectron2's AMPTrainer, with its gradient scaler).",
                cfg.MODEL.RETINANET_EXT.PRECISION)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.AMP.ENABLED = True
    cfg.freeze()
    return cfg


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
