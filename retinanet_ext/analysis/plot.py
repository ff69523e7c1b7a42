"""The picture of :class:`~.anchors.AnchorAnalysis`: object sizes and aspect ratios per class
against the anchors' (matplotlib, Agg backend; imported only when a PNG is asked for)."""

from __future__ import annotations

import os

import numpy as np

from retinanet_ext.analysis.anchors import AnchorAnalysis
from retinanet_ext.analysis.suggest import per_level

__all__ = ["plot_anchor_analysis"]

_MAX_POINTS_PER_CLASS = 3000


def _anchor_shapes(sizes: list, ratios: list, scales_per_octave: int) -> np.ndarray:
    """float[K, 2]: (sqrt(area), height / width) of every anchor shape of the config."""
    sizes, ratios = per_level(sizes), per_level(ratios)
    if len(ratios) == 1:
        ratios = ratios * len(sizes)
    shapes = [(size * 2 ** (i / scales_per_octave), ratio)
              for level_sizes, level_ratios in zip(sizes, ratios, strict=False)
              for size in level_sizes for i in range(scales_per_octave) for ratio in level_ratios]
    return np.asarray(shapes, dtype=np.float64)


def plot_anchor_analysis(analysis: AnchorAnalysis, output: str) -> str:
    """Write the PNG; returns its path.

    Left: every box (sampled per class) as sqrt(area) against height/width, at the
    training size, with today's anchor shapes (black crosses) and the suggestion's (red).
    Right: the size distribution per class, with the anchor sizes as lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cfg, today = analysis.cfg, analysis.today
    octave = int(cfg.MODEL.RETINANET_EXT.ANCHOR_SCALES_PER_OCTAVE)
    today_shapes = _anchor_shapes(cfg.MODEL.ANCHOR_GENERATOR.SIZES,
                                  cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS, octave)
    suggestion = analysis.suggestion if analysis.suggested is not None else None
    figure, (scatter, histogram) = plt.subplots(1, 2, figsize=(13, 5.5))
    rng = np.random.default_rng(0)
    low, high = (today.sizes.min(), today.sizes.max()) if len(today.sizes) else (1.0, 2.0)
    bins = np.geomspace(max(low, 1.0) * 0.9, max(high, 2.0) * 1.1, 40)
    for class_id, name in enumerate(analysis.thing_classes):
        members = np.nonzero(today.classes == class_id)[0]
        if len(members) == 0:
            continue
        shown = rng.choice(members, min(len(members), _MAX_POINTS_PER_CLASS), replace=False)
        scatter.scatter(today.sizes[shown], today.aspect_ratios[shown], s=6, alpha=0.35,
                        label=f"{name} ({len(members)})")
        histogram.hist(today.sizes[members], bins=bins, histtype="step", label=name)
    scatter.scatter(today_shapes[:, 0], today_shapes[:, 1], marker="x", color="black", s=50,
                    label="anchors today")
    for size in np.unique(today_shapes[:, 0]):
        histogram.axvline(size, color="black", linewidth=0.6, alpha=0.5)
    if suggestion is not None:
        scale = suggestion.input_scale
        shapes = _anchor_shapes(suggestion.sizes, suggestion.aspect_ratios, octave)
        # drawn at today's input size: an input scaled by s makes objects s times larger
        scatter.scatter(shapes[:, 0] / scale, shapes[:, 1], marker="+", color="red", s=60,
                        label="suggested anchors" + (f" (input x{scale:g})" if scale != 1 else ""))
        for size in np.unique(shapes[:, 0]):
            histogram.axvline(size / scale, color="red", linewidth=0.6, linestyle="--")
    scatter.set(xscale="log", yscale="log", xlabel="sqrt(area), pixels at the training size",
                ylabel="height / width", title="Boxes and anchor shapes")
    histogram.set(xscale="log", xlabel="sqrt(area), pixels at the training size",
                  ylabel="boxes", title="Box sizes per class; anchor sizes as lines")
    powers_of_two = [2.0 ** k for k in range(-3, 12)]  # sizes and ratios read in octaves
    for axis in (scatter.xaxis, scatter.yaxis, histogram.xaxis):
        axis.set_major_locator(matplotlib.ticker.FixedLocator(powers_of_two))
        axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    scatter.legend(fontsize=7, loc="best")
    histogram.legend(fontsize=7, loc="best")
    figure.tight_layout()
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output
