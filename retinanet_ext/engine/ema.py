"""An exponential moving average (EMA) of the weights, evaluated instead of the weights.

Training keeps ``EMA_t = d_t * EMA_{t-1} + (1 - d_t) * W_t`` after every optimizer step, over
the parameters and the floating-point buffers (batch-norm statistics); integer buffers
(``num_batches_tracked``) are copied. The averaging is torch's ``AveragedModel`` with
``get_ema_multi_avg_fn`` (``torch.optim.swa_utils``); only the decay changes with the number
of updates ``t`` (YOLOv5's and timm's ramp)::

    d_t = DECAY * (1 - exp(-t / WARMUP_ITERS))        (d_t = DECAY when WARMUP_ITERS is 0)

so the first updates take almost all of the new weights and the random initialisation leaves
the average at once (with a constant 0.9998 it would still be 92 % of the EMA after 400
iterations). Config: ``MODEL.RETINANET_EXT.EMA.{ENABLED, DECAY, WARMUP_ITERS}``.

With it on, the project's :class:`~retinanet_ext.engine.Trainer` (see :func:`add_ema_hooks`):

* updates the EMA after each step (:class:`EMAHook`, before checkpointing and evaluation);
* saves it in every checkpoint as the entry ``"ema"`` (a checkpointable, so ``--resume``
  restores it);
* evaluates the EMA model, not the trained one, during training (``TEST.EVAL_PERIOD``) and
  after the last iteration.

:func:`use_ema_weights` puts the EMA weights of such a checkpoint in place of the trained
ones, for loaders that should prefer them (``--eval-only``, the Predictor).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.engine import HookBase, hooks
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from retinanet_ext.checkpoint import (  # the checkpoint format's EMA entry lives there
    EMA_CHECKPOINT_KEY,
    CheckpointError,
    ema_model_weights,
    use_ema_weights,
)
from retinanet_ext.engine.config_checks import ConfigError

__all__ = [
    "EMA_CHECKPOINT_KEY",
    "EMAHook",
    "ModelEMA",
    "add_ema_hooks",
    "build_model_ema",
    "ema_decay",
    "ema_model_weights",
    "use_ema_weights",
]

logger = logging.getLogger(__name__)



def ema_decay(decay: float, num_updates: int, warmup_iters: float) -> float:
    """The decay of update number ``num_updates`` (1 for the first averaging step).

    ``decay * (1 - exp(-num_updates / warmup_iters))``, or ``decay`` when ``warmup_iters``
    is 0.
    """
    if warmup_iters <= 0:
        return decay
    return decay * (1.0 - math.exp(-num_updates / warmup_iters))


class ModelEMA:
    """An EMA copy of a model: :class:`~torch.optim.swa_utils.AveragedModel` with a decay
    that ramps up with the number of updates (see :func:`ema_decay`).

    Has ``state_dict()``/``load_state_dict()`` (the averaged model's: ``n_averaged`` and
    the weights under ``module.``), so Detectron2's checkpointer saves and restores it.

    Args:
        model: the model being trained (unwrapped from DDP); copied at construction.
        decay: the decay the ramp tends to, in [0, 1).
        warmup_iters: time constant of the ramp, in updates; 0 for a constant decay.
    """

    def __init__(self, model: nn.Module, decay: float, warmup_iters: float = 0.0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), found {decay!r}")
        if warmup_iters < 0:
            raise ValueError(f"EMA warm-up must be >= 0 iterations, found {warmup_iters!r}")
        self.decay = float(decay)
        self.warmup_iters = float(warmup_iters)
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.requires_grad_(False)
        self.averaged.eval()

    @property
    def module(self) -> nn.Module:
        """The averaged model (same class as the trained one), to evaluate."""
        return self.averaged.module

    @property
    def num_updates(self) -> int:
        """How many times :meth:`update` ran (the first one copies the weights)."""
        return int(self.averaged.n_averaged)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses (0 for the first: it copies)."""
        updates = self.num_updates
        return 0.0 if updates == 0 else ema_decay(self.decay, updates, self.warmup_iters)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights and buffers into the average."""
        self.averaged.update_parameters(model)

    def _average(self, ema_tensors: list[Tensor], model_tensors: list[Tensor],
                 num_averaged: Tensor) -> None:
        """``AveragedModel``'s ``multi_avg_fn`` for one group of tensors of one dtype."""
        if ema_tensors[0].is_floating_point():
            decay = ema_decay(self.decay, int(num_averaged), self.warmup_iters)
            get_ema_multi_avg_fn(decay)(ema_tensors, model_tensors, num_averaged)
        else:  # counters (BatchNorm's num_batches_tracked): an average means nothing
            for ema_tensor, model_tensor in zip(ema_tensors, model_tensors, strict=True):
                ema_tensor.copy_(model_tensor)

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`.

        Raises:
            CheckpointError: ``state`` is not the EMA of this model (other weights or shapes).
        """
        if not isinstance(state, Mapping):
            raise CheckpointError(f"checkpoint entry '{EMA_CHECKPOINT_KEY}' must be a dict of "
                                  f"tensors, found {type(state).__name__}")
        tensors = {k: torch.as_tensor(v) for k, v in state.items()}
        try:
            self.averaged.load_state_dict(tensors)
        except RuntimeError as error:
            raise CheckpointError(
                f"checkpoint entry '{EMA_CHECKPOINT_KEY}' does not fit this model (was it "
                f"written for another config?): {str(error).splitlines()[0]}") from error


def build_model_ema(cfg: CfgNode, model: nn.Module) -> ModelEMA:
    """:class:`ModelEMA` of ``model`` from ``MODEL.RETINANET_EXT.EMA.{DECAY, WARMUP_ITERS}``.

    Raises:
        ConfigError: a value out of range, naming its key.
    """
    node = cfg.MODEL.RETINANET_EXT.EMA
    if not 0.0 <= node.DECAY < 1.0:
        raise ConfigError(f"MODEL.RETINANET_EXT.EMA.DECAY must be in [0, 1), found {node.DECAY!r}")
    if node.WARMUP_ITERS < 0:
        raise ConfigError(
            f"MODEL.RETINANET_EXT.EMA.WARMUP_ITERS must be >= 0, found {node.WARMUP_ITERS!r}")
    return ModelEMA(model, node.DECAY, node.WARMUP_ITERS)


class EMAHook(HookBase):
    """Updates a :class:`ModelEMA` after every training step and logs its decay.

    Must come before the hooks that save or evaluate (so they see this step's average).

    Args:
        ema: the average.
        model: the model being trained (unwrapped from DDP).
    """

    def __init__(self, ema: ModelEMA, model: nn.Module) -> None:
        self.ema = ema
        self.model = model

    def after_step(self) -> None:
        decay = self.ema.current_decay()
        self.ema.update(self.model)
        self.trainer.storage.put_scalar("ema_decay", decay, smoothing_hint=False)


def add_ema_hooks(trainer: Any, hook_list: list) -> list:
    """``hook_list`` (a ``DefaultTrainer``'s hooks) with the EMA switched on.

    Builds the :class:`ModelEMA` of ``trainer.checkpointer.model``, registers it on
    ``trainer.checkpointer.checkpointables`` under :data:`EMA_CHECKPOINT_KEY`, inserts an
    :class:`EMAHook` before the first checkpointing or evaluation hook, and replaces
    Detectron2's ``EvalHook`` by one that evaluates the EMA model (same period).
    """
    cfg = trainer.cfg
    model = trainer.checkpointer.model
    ema = build_model_ema(cfg, model)
    trainer.checkpointer.checkpointables[EMA_CHECKPOINT_KEY] = ema
    logger.info("Evaluating an EMA of the weights: decay %g, warm-up %g iterations",
                ema.decay, ema.warmup_iters)

    def evaluate_ema() -> Any:
        results = trainer.test(cfg, ema.module)
        trainer.ema_eval_results = results  # what Trainer.train checks and returns
        return results

    ema_hook = EMAHook(ema, model)
    result: list = []
    for hook in hook_list:
        if isinstance(hook, hooks.PeriodicCheckpointer | hooks.EvalHook) and ema_hook not in result:
            result.append(ema_hook)
        if isinstance(hook, hooks.EvalHook):
            hook = hooks.EvalHook(cfg.TEST.EVAL_PERIOD, evaluate_ema)
        result.append(hook)
    if ema_hook not in result:
        result.append(ema_hook)
    return result
