"""The highest class score a dense detector gave during an evaluation, before any threshold.

When an evaluation finds no detections, the evaluator says how close the model came: a
model whose best score is 0.049 under a 0.05 threshold needs more training (or a lower
threshold); one at 0.001 is broken. The detections that reach the evaluator are already
thresholded, so the score is read where it is made: a forward hook on ``model.head``,
whose output is ``(logits_per_level, deltas_per_level)`` with classification logits
``Tensor[N, A*K, H, W]`` per level (RetinaNet scores are their sigmoid, Sec. 4 of the paper).

    with watch_highest_score(model):
        inference_on_dataset(model, loader, evaluator)   # the evaluator reads it
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["ScoreProbe", "active_probe", "watch_highest_score"]

_active: list[ScoreProbe] = []


class ScoreProbe:
    """Running maximum of ``sigmoid(logit)`` over every head output it saw.

    Attributes:
        highest_score: the maximum in [0, 1], or None before any forward pass.
        score_thresh: the model's ``test_score_thresh`` (None if it has none).
    """

    def __init__(self, score_thresh: float | None = None) -> None:
        self.highest_score: float | None = None
        self.score_thresh = score_thresh

    def reset(self) -> None:
        self.highest_score = None

    def observe(self, logits_per_level: list[torch.Tensor]) -> None:
        """Fold in one head output: ``logits_per_level``, each ``Tensor[N, A*K, H, W]``."""
        top = max((float(x.detach().max()) for x in logits_per_level if x.numel()),
                  default=None)
        if top is None or math.isnan(top):
            return
        score = 1.0 / (1.0 + math.exp(-top)) if top > -700 else 0.0  # exp overflows below
        self.highest_score = score if self.highest_score is None else max(
            self.highest_score, score)

    def hook(self, _module: torch.nn.Module, _inputs: Any, outputs: Any) -> None:
        """``register_forward_hook`` callback; ignores outputs not shaped like a dense head's."""
        if isinstance(outputs, list | tuple) and outputs and isinstance(outputs[0], list | tuple):
            tensors = [x for x in outputs[0] if isinstance(x, torch.Tensor)]
            if tensors:
                self.observe(tensors)


def active_probe() -> ScoreProbe | None:
    """The probe of the innermost :func:`watch_highest_score`, or None outside one."""
    return _active[-1] if _active else None


@contextlib.contextmanager
def watch_highest_score(model: torch.nn.Module) -> Iterator[ScoreProbe | None]:
    """Within the block, record the highest score of ``model``'s head (see the module doc).

    A model without a ``head`` submodule (or wrapped by DistributedDataParallel, whose
    ``module`` has it) is run unwatched: yields None and changes nothing.
    """
    inner = getattr(model, "module", model)
    head = getattr(inner, "head", None)
    if not isinstance(head, torch.nn.Module):
        yield None
        return
    probe = ScoreProbe(getattr(inner, "test_score_thresh", None))
    handle = head.register_forward_hook(probe.hook)
    _active.append(probe)
    try:
        yield probe
    finally:
        _active.remove(probe)
        handle.remove()
