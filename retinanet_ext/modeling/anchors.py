"""Anchor boxes for every location of every pyramid level.

Paper, Sec. 4 ("Anchors"): on P3-P7, base sizes 32..512 (areas 32^2..512^2), each with
octave scales {2^0, 2^(1/3), 2^(2/3)} and aspect ratios {1:2, 1:1, 2:1}: A = 9 anchors
per location.

:class:`RetinaNetExtAnchorGenerator` is Detectron2's ``DefaultAnchorGenerator`` (same anchors,
order and float32 values) plus what it lacks: octave scales from one size per level
(``MODEL.RETINANET_EXT.ANCHOR_SCALES_PER_OCTAVE``), argument checks with messages naming the
config key, and a cache of the anchor grids per feature-map size (they depend on nothing
else, and training at one input size asks for the same grids every step).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator
from detectron2.structures import Boxes
from torch import Tensor

from retinanet_ext.modeling._cfg import retinanet_ext_node

__all__ = ["RetinaNetExtAnchorGenerator", "broadcast_per_level", "expand_octave_scales"]


def broadcast_per_level(
    params: Sequence[float] | Sequence[Sequence[float]], num_levels: int, name: str
) -> list[list[float]]:
    """Per-level lists from a config value: one flat list (or a list holding one list) is
    used for every level; otherwise there must be one list per level, of positive values.
    """
    if not isinstance(params, Sequence) or len(params) == 0:
        raise ValueError(f"MODEL.ANCHOR_GENERATOR.{name} must be a non-empty list, got {params!r}.")
    if not isinstance(params[0], Sequence):
        per_level = [list(params)] * num_levels
    elif len(params) == 1:
        per_level = [list(params[0])] * num_levels
    elif len(params) != num_levels:
        raise ValueError(
            f"MODEL.ANCHOR_GENERATOR.{name} has {len(params)} lists but there are {num_levels} "
            "feature levels: give one list per level, or a single list for all."
        )
    else:
        per_level = [list(level) for level in params]
    if any(not level or min(level) <= 0 for level in per_level):
        raise ValueError(f"MODEL.ANCHOR_GENERATOR.{name} must be non-empty and > 0: {params!r}.")
    return per_level


def expand_octave_scales(
    sizes_per_level: Sequence[Sequence[float]], scales_per_octave: int
) -> list[list[float]]:
    """Each size x becomes ``x * 2^(i / scales_per_octave)``, i = 0..scales_per_octave-1.

    Sizes are kept in order, each followed by its larger scales; the values equal
    Detectron2's Base-RetinaNet.yaml expression ``x * 2**(i/3.0)`` exactly.
    """
    if scales_per_octave < 1:
        raise ValueError(
            f"MODEL.RETINANET_EXT.ANCHOR_SCALES_PER_OCTAVE must be >= 1, got {scales_per_octave}."
        )
    return [
        [size * 2 ** (i / scales_per_octave) for size in sizes for i in range(scales_per_octave)]
        for sizes in sizes_per_level
    ]


@ANCHOR_GENERATOR_REGISTRY.register()
class RetinaNetExtAnchorGenerator(DefaultAnchorGenerator):
    """Detectron2's ``DefaultAnchorGenerator`` with octave scales, checks and cached grids.

    ``forward(features)`` returns, per level, Boxes of H_i * W_i * A_i absolute XYXY anchors
    (location-major, row by row; within a location size-major, then aspect ratio). The
    returned tensors are shared with the cache: do not modify them in place.
    """

    @configurable
    def __init__(
        self,
        *,
        sizes: Sequence[float] | Sequence[Sequence[float]],
        aspect_ratios: Sequence[float] | Sequence[Sequence[float]],
        strides: Sequence[int],
        offset: float,
        scales_per_octave: int = 1,
        max_cached_grids: int = 16,
    ) -> None:
        """
        Args:
            sizes: anchor sizes (square root of area, input pixels) per level, or one list
                for all levels.
            aspect_ratios: height / width per level, or one list for all levels.
            strides: stride of each feature map.
            offset: centre of the first anchor relative to the top-left image corner, in
                strides, in [0, 1) (MODEL.ANCHOR_GENERATOR.OFFSET).
            scales_per_octave: expand each size into this many octave scales
                (see :func:`expand_octave_scales`); 1 uses ``sizes`` as given.
            max_cached_grids: how many feature-map sizes (with device and dtype) to keep.
        """
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"MODEL.ANCHOR_GENERATOR.OFFSET must be in [0, 1), got {offset}.")
        num_levels = len(strides)
        sizes_per_level = expand_octave_scales(
            broadcast_per_level(sizes, num_levels, "SIZES"), scales_per_octave
        )
        super().__init__(
            sizes=sizes_per_level,
            aspect_ratios=broadcast_per_level(aspect_ratios, num_levels, "ASPECT_RATIOS"),
            strides=list(strides),
            offset=offset,
        )
        self.max_cached_grids = max_cached_grids
        self.grid_cache: OrderedDict[tuple, list[Tensor]] = OrderedDict()

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Sequence[ShapeSpec]) -> dict:
        return {
            **DefaultAnchorGenerator.from_config(cfg, input_shape),
            "scales_per_octave": retinanet_ext_node(cfg).ANCHOR_SCALES_PER_OCTAVE,
        }

    def forward(self, features: Sequence[Tensor]) -> list[Boxes]:
        """
        Args:
            features: per level, Tensor[N, C, H_i, W_i] (only the sizes are used).

        Returns:
            Per level, Boxes[H_i * W_i * A_i] of absolute XYXY anchors.
        """
        cell = next(iter(self.cell_anchors))
        key = (tuple(tuple(f.shape[-2:]) for f in features), cell.device, cell.dtype)
        grids = self.grid_cache.get(key)
        if grids is None:
            grids = [boxes.tensor for boxes in super().forward(list(features))]
            self.grid_cache[key] = grids
            while len(self.grid_cache) > self.max_cached_grids:
                self.grid_cache.popitem(last=False)
        else:
            self.grid_cache.move_to_end(key)
        return [Boxes(grid) for grid in grids]
