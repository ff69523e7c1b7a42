"""Anchor boxes for every location of every pyramid level.

Paper, Sec. 4 ("Anchors"): on P3-P7, base sizes 32..512 (areas 32^2..512^2), each with
octave scales {2^0, 2^(1/3), 2^(2/3)} and aspect ratios {1:2, 1:1, 2:1}: A = 9 anchors
per location.

The anchors, their order (location-major, row by row; within a location size-major, then
aspect ratio) and their float32 values equal Detectron2's ``DefaultAnchorGenerator`` for the
same settings, so predictions of either model line up with either generator.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from retinanet_ext.modeling._cfg import retinanet_ext_node

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY
from detectron2.structures import Boxes
from torch import Tensor, nn

__all__ = [
    "RetinaNetExtAnchorGenerator",
    "broadcast_per_level",
    "expand_octave_scales",
    "generate_cell_anchors",
    "grid_anchors",
]


def broadcast_per_level(
    params: Sequence[float] | Sequence[Sequence[float]], num_levels: int, name: str
) -> list[list[float]]:
    """Per-level lists from a config value: one flat list (or a list holding one list) is
    used for every level; otherwise there must be one list per level.
    """
    if not isinstance(params, Sequence) or len(params) == 0:
        raise ValueError(f"Anchor {name} must be a non-empty list, got {params!r}.")
    if not isinstance(params[0], Sequence):
        return [list(params)] * num_levels
    if len(params) == 1:
        return [list(params[0])] * num_levels
    if len(params) != num_levels:
        raise ValueError(
            f"Anchor {name} has {len(params)} lists but there are {num_levels} feature levels: "
            "give one list per level, or a single list for all."
        )
    return [list(level) for level in params]


def expand_octave_scales(
    sizes_per_level: Sequence[Sequence[float]], scales_per_octave: int
) -> list[list[float]]:
    """Each size x becomes ``x * 2^(i / scales_per_octave)``, i = 0..scales_per_octave-1.

    Sizes are kept in order, each followed by its larger scales; the values equal
    Detectron2's Base-RetinaNet.yaml expression ``x * 2**(i/3.0)`` exactly.
    """
    if scales_per_octave < 1:
        raise ValueError(f"scales_per_octave must be >= 1, got {scales_per_octave}.")
    return [
        [size * 2 ** (i / scales_per_octave) for size in sizes for i in range(scales_per_octave)]
        for sizes in sizes_per_level
    ]


def generate_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """Anchors of one location, centred at (0, 0).

    Args:
        sizes: square roots of the anchor areas, in pixels.
        aspect_ratios: height / width.

    Returns:
        Tensor[len(sizes) * len(aspect_ratios), 4], float32 XYXY, size-major order. An anchor
        of size s and ratio a has width sqrt(s^2 / a) and height a * width (area s^2),
        computed in float64 and rounded once.
    """
    size = torch.tensor(list(sizes), dtype=torch.float64)[:, None]
    ratio = torch.tensor(list(aspect_ratios), dtype=torch.float64)[None, :]
    if (size <= 0).any() or (ratio <= 0).any():
        raise ValueError(f"Anchor sizes {sizes} and aspect ratios {aspect_ratios} must be > 0.")
    width = torch.sqrt(size * size / ratio)
    height = ratio * width
    half_w, half_h = width / 2.0, height / 2.0
    return torch.stack((-half_w, -half_h, half_w, half_h), dim=-1).reshape(-1, 4).float()


def grid_anchors(
    cell_anchors: Tensor, grid_size: tuple[int, int], stride: int, offset: float
) -> Tensor:
    """All anchors of one feature map: ``cell_anchors`` shifted to every location.

    Args:
        cell_anchors: Tensor[A, 4], XYXY around (0, 0).
        grid_size: (H, W) of the feature map.
        stride: its stride in input pixels.
        offset: location (x, y) of cell (i, j) is ((j + offset) * stride, (i + offset) * stride).

    Returns:
        Tensor[H * W * A, 4], absolute XYXY pixels, row-major over locations, A anchors each.
    """
    height, width = grid_size
    device = cell_anchors.device
    # float64 then one rounding: equals torch.arange(offset * stride, ..., step=stride).
    shifts_x = (torch.arange(width, dtype=torch.float64, device=device) * stride) + offset * stride
    shifts_y = (torch.arange(height, dtype=torch.float64, device=device) * stride) + offset * stride
    shift_y, shift_x = torch.meshgrid(shifts_y.float(), shifts_x.float(), indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts[:, None, :] + cell_anchors[None, :, :]).reshape(-1, 4)


@ANCHOR_GENERATOR_REGISTRY.register()
class RetinaNetExtAnchorGenerator(nn.Module):
    """Anchors for a list of feature maps, cached per feature-map size and device.

    The cell anchors are non-persistent buffers: they follow ``.to(device)`` but add no
    keys to the state dict (as in Detectron2).
    """

    box_dim: int = 4

    @configurable
    def __init__(
        self,
        *,
        sizes: Sequence[float] | Sequence[Sequence[float]],
        aspect_ratios: Sequence[float] | Sequence[Sequence[float]],
        strides: Sequence[int],
        offset: float = 0.5,
        scales_per_octave: int = 1,
        max_cached_grids: int = 64,
    ) -> None:
        """
        Args:
            sizes: anchor sizes (square root of area, input pixels) per level, or one list
                for all levels.
            aspect_ratios: height / width per level, or one list for all levels.
            strides: stride of each feature map.
            offset: centre of the first anchor relative to the top-left image corner, in
                strides, in [0, 1): 0.5 is the cell centre (MODEL.ANCHOR_GENERATOR.OFFSET
                defaults to 0.0, the cell corner, as in Detectron2).
            scales_per_octave: expand each size into this many octave scales
                (see :func:`expand_octave_scales`); 1 uses ``sizes`` as given.
            max_cached_grids: how many (level, feature-map size, device) anchor grids to keep.
        """
        super().__init__()
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"Anchor offset must be in [0, 1), got {offset}.")
        self.strides = [int(s) for s in strides]
        self.num_features = len(self.strides)
        self.offset = float(offset)
        sizes_per_level = expand_octave_scales(
            broadcast_per_level(sizes, self.num_features, "sizes"), scales_per_octave
        )
        ratios_per_level = broadcast_per_level(aspect_ratios, self.num_features, "aspect_ratios")
        for level, (level_sizes, level_ratios) in enumerate(
            zip(sizes_per_level, ratios_per_level, strict=True)
        ):
            self.register_buffer(
                f"cell_anchors_{level}",
                generate_cell_anchors(level_sizes, level_ratios),
                persistent=False,
            )
        self._max_cached_grids = max_cached_grids
        self._grid_cache: OrderedDict[tuple, Tensor] = OrderedDict()

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Sequence[ShapeSpec]) -> dict:
        return {
            "sizes": cfg.MODEL.ANCHOR_GENERATOR.SIZES,
            "aspect_ratios": cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
            "strides": [shape.stride for shape in input_shape],
            "offset": cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
            "scales_per_octave": retinanet_ext_node(cfg).ANCHOR_SCALES_PER_OCTAVE,
        }

    @property
    def cell_anchors(self) -> list[Tensor]:
        """Per level, Tensor[A_i, 4]: the anchors of one location centred at (0, 0)."""
        return [getattr(self, f"cell_anchors_{level}") for level in range(self.num_features)]

    @property
    def num_anchors(self) -> list[int]:
        """Anchors per location (A_i) on each level, e.g. [9, 9, 9, 9, 9]."""
        return [len(cell) for cell in self.cell_anchors]

    @property
    def num_cell_anchors(self) -> list[int]:
        """Alias of :attr:`num_anchors` (Detectron2's name)."""
        return self.num_anchors

    def grid_anchors(self, grid_sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """Per level, Tensor[H_i * W_i * A_i, 4] absolute XYXY anchors (cached; do not modify)."""
        if len(grid_sizes) != self.num_features:
            raise ValueError(
                f"Got {len(grid_sizes)} feature maps, the anchor generator was built for "
                f"{self.num_features} strides {self.strides}."
            )
        anchors = []
        for level, (cell, size, stride) in enumerate(
            zip(self.cell_anchors, grid_sizes, self.strides, strict=True)
        ):
            key = (level, int(size[0]), int(size[1]), cell.device, cell.dtype)
            grid = self._grid_cache.get(key)
            if grid is None:
                grid = grid_anchors(cell, (key[1], key[2]), stride, self.offset)
                self._grid_cache[key] = grid
                while len(self._grid_cache) > self._max_cached_grids:
                    self._grid_cache.popitem(last=False)
            else:
                self._grid_cache.move_to_end(key)
            anchors.append(grid)
        return anchors

    def forward(self, features: Sequence[Tensor]) -> list[Boxes]:
        """
        Args:
            features: per level, Tensor[N, C, H_i, W_i] (only the sizes are used).

        Returns:
            Per level, Boxes of H_i * W_i * A_i anchors (see :func:`grid_anchors`).
        """
        grid_sizes = [tuple(feature.shape[-2:]) for feature in features]
        return [Boxes(anchors) for anchors in self.grid_anchors(grid_sizes)]

