"""Stop training at the first non-finite loss or gradient, naming the culprit.

:class:`NonFiniteGuard` is a Detectron2 hook. During training it checks every loss term
right after the forward pass (a forward hook on the model) and every gradient right before
the optimizer step (``Optimizer.register_step_pre_hook``); the first NaN/Inf stops the run
with :class:`TrainingDivergedError`, which names the iteration, the loss term or parameter,
the learning rate and the files of the batch's images, with a hint about the usual cause:
a learning rate not scaled down for a small batch (detectron2#550). The weights are never
updated with a non-finite gradient, so the last checkpoint on disk stays the last good one.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from detectron2.engine import HookBase

__all__ = ["NonFiniteGuard", "TrainingDivergedError", "quiet_divergence_traceback"]

#: Detectron2's learning rate for 16 images per batch in its recipes (linear scaling rule).
REFERENCE_LR, REFERENCE_BATCH = 0.01, 16


class TrainingDivergedError(FloatingPointError):
    """A loss or gradient became NaN/Inf during training (a user error: fix the config)."""


class NonFiniteGuard(HookBase):
    """Checks losses and gradients for NaN/Inf; see the module docstring.

    Args:
        model: the (unwrapped) model being trained; its forward receives the batch.
        optimizer: the optimizer stepping it.
        base_lr, ims_per_batch: ``SOLVER.BASE_LR`` and ``SOLVER.IMS_PER_BATCH``, for the hint.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 base_lr: float, ims_per_batch: int) -> None:
        self.model = model
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.ims_per_batch = int(ims_per_batch)
        self.batch_files: list[str] = []
        self._handles: list[Any] = []
        self._param_names: dict[int, str] = {}

    def before_train(self) -> None:
        self._param_names = {id(p): name for name, p in self.model.named_parameters()}
        self._handles = [self.model.register_forward_hook(self._after_forward),
                         self.optimizer.register_step_pre_hook(self._before_step)]

    def after_train(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _after_forward(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if not module.training or not isinstance(output, Mapping):
            return
        batch = args[0] if args else []
        self.batch_files = [str(d.get("file_name", "?")) for d in batch
                            if isinstance(d, Mapping)]
        values = {name: float(v.detach().float().sum()) if isinstance(v, torch.Tensor)
                  else float(v) for name, v in output.items()}
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:
            terms = ", ".join(f"{name} is {values[name]}" for name in bad)
            others = ", ".join(f"{n} {v:.4g}" for n, v in values.items() if n not in bad)
            raise TrainingDivergedError(self._message(
                f"{terms}{f' ({others})' if others else ''}"))

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]
                  if p.grad is not None]
        if not params:
            return
        # One fused pass (torch's foreach norm): the norm of all gradients is finite when each
        # one is. Only then (rare) is each parameter looked at, to name the culprit; a norm that
        # overflows with every gradient finite is no divergence yet.
        grads = [p.grad for p in params]
        if bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, foreach=True))):
            return
        finite = torch.stack([torch.isfinite(g).all() for g in grads])
        if bool(finite.all()):
            return
        bad = [self._param_names.get(id(p), "?") for p, ok in zip(params, finite.tolist(),
                                                                   strict=True) if not ok]
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise TrainingDivergedError(self._message(
            f"the gradient of {', '.join(bad[:3])}{more} is not finite (the losses were finite)"))

    def _message(self, what: str) -> str:
        iteration = getattr(self.trainer, "iter", "?")
        lrs = sorted({group["lr"] for group in self.optimizer.param_groups})
        lr = f"{lrs[-1]:.6g}" if lrs else "?"
        files = ", ".join(self.batch_files) if self.batch_files else "(unknown)"
        return (f"training diverged at iteration {iteration}: {what}; learning rate {lr}; "
                f"batch images: {files}. {self._kept_checkpoint()}{self._hint()}")

    def _kept_checkpoint(self) -> str:
        checkpointer = getattr(self.trainer, "checkpointer", None)
        with contextlib.suppress(Exception):
            if checkpointer is not None and checkpointer.has_checkpoint():
                return (f"Nothing was saved from this step; the last good checkpoint is "
                        f"{checkpointer.get_checkpoint_file()}. ")
        return "Nothing was saved from this step. "

    def _hint(self) -> str:
        scaled = REFERENCE_LR * self.ims_per_batch / REFERENCE_BATCH
        return (f"Hint: the usual cause is a learning rate not scaled down for a small batch "
                f"(detectron2#550): SOLVER.BASE_LR is {self.base_lr:g} for SOLVER.IMS_PER_BATCH "
                f"{self.ims_per_batch}; Detectron2's recipes use {REFERENCE_LR:g} for "
                f"{REFERENCE_BATCH} images, i.e. about {scaled:.3g} for {self.ims_per_batch} "
                f"(linear scaling). Lower SOLVER.BASE_LR or raise SOLVER.WARMUP_ITERS, and "
                f"check the batch's images and boxes.")


class _DropDivergenceTraceback(logging.Filter):
    """Logs Detectron2's "Exception during training" for a divergence without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, TrainingDivergedError):
            record.exc_info = None
            record.msg, record.args = "Training stopped: %s", (error,)
        return True


@contextlib.contextmanager
def quiet_divergence_traceback(
    logger_names: Sequence[str] = ("detectron2.engine.train_loop",),
) -> Iterator[None]:
    """While active, Detectron2's trainer logs a :class:`TrainingDivergedError` in one line
    (it is a user error, reported by the caller), other exceptions with their traceback."""
    loggers = [logging.getLogger(name) for name in logger_names]
    log_filter = _DropDivergenceTraceback()
    for log in loggers:
        log.addFilter(log_filter)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(log_filter)
