"""The paper's focal-loss figures, computed with the project's loss function.

* Figure 1: the focal loss ``FL(p_t) = -(1 - p_t)^gamma log(p_t)`` against the probability of
  the ground-truth class ``p_t``, for gamma 0 (cross-entropy), 0.5, 1, 2 and 5
  (:func:`focal_loss_curves`).
* Figure 4: for a trained model, the cumulative distribution of the normalised focal loss
  over the foreground anchors and, separately, over the background anchors, for several
  gamma (:func:`anchor_focal_losses`, :func:`normalized_loss_cdf`). Each anchor's loss is
  the sum of its K per-class binary terms; anchors are labelled by the model's own assigner
  (``model.criterion.assigner``, so what training sees); ignored anchors are left out. The
  loss of each group is normalised to sum to one, so alpha (a constant factor within a
  group) drops out, as in the paper (Sec. 5.1, "Analysis of the Focal Loss").

Every value is :func:`~retinanet_ext.modeling.losses.sigmoid_focal_loss` (fvcore's, the
one training uses) on logits, never ``log(sigmoid(x))`` by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from retinanet_ext.modeling.head import flatten_dense_predictions
from retinanet_ext.modeling.losses import sigmoid_focal_loss

__all__ = [
    "FIGURE1_GAMMAS",
    "FIGURE4_GAMMAS",
    "AnchorLosses",
    "anchor_focal_losses",
    "focal_loss_curves",
    "focal_loss_of_probability",
    "normalized_loss_cdf",
    "plot_focal_loss_curves",
    "plot_loss_cdfs",
    "worked_values",
]

#: The gamma values of the paper's figure 1 and figure 4.
FIGURE1_GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
FIGURE4_GAMMAS = (0.0, 0.5, 1.0, 2.0)


def focal_loss_of_probability(p_t: Tensor, gamma: float, alpha: float = -1.0) -> Tensor:
    """FL(p_t) for probabilities of the true class ``p_t`` (Tensor[...] in (0, 1)).

    The loss of a positive example whose logit is ``logit(p_t)``; ``alpha`` < 0: none
    (figure 1), else the paper's alpha-balanced form.
    """
    logits = torch.logit(p_t.double()).float()
    return sigmoid_focal_loss(logits, torch.ones_like(logits), alpha=alpha, gamma=gamma,
                              reduction="none")


def focal_loss_curves(gammas: Sequence[float] = FIGURE1_GAMMAS,
                      num_points: int = 500) -> dict[str, list]:
    """Figure 1's numbers: ``{"p_t": [...], "gammas": [...], "loss": [[...] per gamma]}``,
    ``p_t`` evenly spaced in [0.002, 0.998] (the loss is infinite at 0 and 0 at 1)."""
    p_t = torch.linspace(0.002, 0.998, num_points, dtype=torch.float64)
    losses = [focal_loss_of_probability(p_t, gamma).tolist() for gamma in gammas]
    return {"p_t": p_t.tolist(), "gammas": [float(g) for g in gammas], "loss": losses}


def normalized_loss_cdf(losses: Tensor | np.ndarray,
                        num_points: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative share of the total loss held by the smallest losses (figure 4).

    The losses are sorted ascending and normalised to sum to one; the curve joins
    (0, 0) and the points (i / n, sum of the i smallest / total), read off at
    ``num_points`` evenly spaced fractions of the examples.

    Args:
        losses: Tensor[n] or array[n], n >= 1, non-negative.

    Returns:
        ``(fractions[num_points], cumulative[num_points])``, both from 0 to 1.

    Raises:
        ValueError: no losses, or they sum to zero.
    """
    values = np.sort(np.asarray(losses, dtype=np.float64).ravel())
    total = values.sum()
    if values.size == 0 or not total > 0:
        raise ValueError(f"need losses with a positive sum, got {values.size} summing to {total}")
    fractions = np.arange(values.size + 1) / values.size
    cumulative = np.concatenate([[0.0], np.cumsum(values) / total])
    grid = np.linspace(0.0, 1.0, num_points)
    return grid, np.interp(grid, fractions, cumulative)


@dataclass
class AnchorLosses:
    """Per-anchor focal losses of foreground and background anchors, per gamma.

    Attributes:
        gammas: the gamma values.
        foreground, background: gamma -> list of Tensor[n_i] (one per image); each value
            is one anchor's loss summed over the K classes.
        num_images: images seen.
    """

    gammas: tuple[float, ...]
    foreground: dict[float, list[Tensor]] = field(default_factory=dict)
    background: dict[float, list[Tensor]] = field(default_factory=dict)
    num_images: int = 0

    def counts(self) -> tuple[int, int]:
        """(foreground anchors, background anchors) seen."""
        first = self.gammas[0]
        return (sum(len(t) for t in self.foreground.get(first, [])),
                sum(len(t) for t in self.background.get(first, [])))

    def concatenated(self, group: str, gamma: float) -> Tensor:
        """All losses of ``group`` ("foreground" or "background") at ``gamma``, Tensor[n]."""
        parts = getattr(self, group).get(gamma, [])
        return torch.cat(parts) if parts else torch.zeros(0)


@torch.no_grad()
def anchor_focal_losses(model: nn.Module, batches: Iterable[list[dict]],
                        gammas: Sequence[float] = FIGURE4_GAMMAS) -> AnchorLosses:
    """Focal losses of every foreground and background anchor of ``batches``.

    Args:
        model: a :class:`~retinanet_ext.modeling.meta_arch.RetinaNetExt` (its backbone,
            head, anchor generator and ``criterion.assigner`` are used), in eval mode.
        batches: lists of Detectron2 input dicts with ``image`` and ``instances``
            (ground truth at the image's input size, as ``DatasetMapper(is_train=True)``
            gives them).
        gammas: the focusing parameters to evaluate the loss at.

    Returns:
        The per-anchor losses (see :class:`AnchorLosses`).
    """
    result = AnchorLosses(tuple(float(g) for g in gammas))
    for gamma in result.gammas:
        result.foreground[gamma], result.background[gamma] = [], []
    for batch in batches:
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        features = [features[name] for name in model.head_in_features]
        logits_per_level, _ = model.head(features)
        gt_instances = [item["instances"].to(model.device) for item in batch]
        targets = model.criterion.assigner(
            model.anchor_generator(features), gt_instances, model.num_classes)
        logits = flatten_dense_predictions(logits_per_level, model.num_classes).float()
        valid_logits = logits[targets.valid]
        cls_targets = targets.classification_targets(dtype=valid_logits.dtype)
        is_foreground = targets.foreground[targets.valid].cpu()
        for gamma in result.gammas:
            per_anchor = sigmoid_focal_loss(valid_logits, cls_targets, alpha=-1, gamma=gamma,
                                            reduction="none").sum(dim=1).cpu()
            result.foreground[gamma].append(per_anchor[is_foreground])
            result.background[gamma].append(per_anchor[~is_foreground])
        result.num_images += len(batch)
    return result


def plot_focal_loss_curves(curves: dict[str, list], path: str) -> str:
    """Figure 1 as a PNG at ``path`` (from :func:`focal_loss_curves`); returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for gamma, loss in zip(curves["gammas"], curves["loss"], strict=True):
        extra = " (cross-entropy)" if gamma == 0 else ""
        ax.plot(curves["p_t"], loss, label=f"$\\gamma$ = {gamma:g}{extra}")
    ax.set(xlim=(0, 1), ylim=(0, 5), xlabel="probability of ground truth class",
           ylabel="loss", title="$FL(p_t) = -(1 - p_t)^{\\gamma} \\log(p_t)$")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_loss_cdfs(cdfs: dict[str, dict], path: str, title: str = "") -> str:
    """Figure 4 as a PNG at ``path``: one panel per group ("foreground", "background"),
    one curve per gamma. ``cdfs[group]["fraction"]`` and ``cdfs[group]["cumulative"]``
    (gamma string -> list) as written by the ``plot-focal`` command."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in ("foreground", "background") if g in cdfs]
    fig, axes = plt.subplots(1, len(groups), figsize=(6.0 * len(groups), 4.8), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        data = cdfs[group]
        for gamma, cumulative in data["cumulative"].items():
            ax.plot(data["fraction"], cumulative, label=f"$\\gamma$ = {float(gamma):g}")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"fraction of {group} examples",
               ylabel="cumulative normalized loss",
               title=f"{group} anchors (n = {data['count']:,})")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def worked_values(probabilities: Sequence[float] = (0.9, 0.968)) -> dict[str, dict[str, float]]:
    """Cross-entropy and gamma-2 focal loss at a few ``p_t`` and their ratio (paper, Sec. 3.2:
    100x lower at p_t = 0.9, about 1000x at p_t = 0.968)."""
    p_t = torch.tensor(list(probabilities), dtype=torch.float64)
    ce = focal_loss_of_probability(p_t, 0.0).tolist()
    focal = focal_loss_of_probability(p_t, 2.0).tolist()
    return {f"p_t={p:g}": {"ce": c, "fl_gamma2": f, "ratio": c / f}
            for p, c, f in zip(probabilities, ce, focal, strict=True)}
