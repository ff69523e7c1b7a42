"""How well the model's anchors fit the training boxes, box by box.

The anchors come from the model's own anchor generator, built from the config with
Detectron2's ``build_anchor_generator`` and the backbone's feature strides, and the
anchors are matched to boxes by the model's own matcher (``build_anchor_matcher``:
``MODEL.RETINANET.IOU_THRESHOLDS`` / ``IOU_LABELS`` and low-quality matches), so what is
measured here is what training will do. Boxes are taken at the training resize
(``ResizeShortestEdge`` to each of ``INPUT.MIN_SIZE_TRAIN``) and images are padded to the
backbone's ``size_divisibility``, as the model pads them.

Per box (:class:`BoxCoverage`): the best IoU over all anchors; the anchors assigned to it
at IoU >= the foreground threshold (after competition with the image's other boxes: an
anchor goes to the box it overlaps most); and the anchors training assigns to it, which
adds the low-quality matches (each box's best anchors) when those are on.

Each box is compared with the anchors that can matter to it, found per level from the
anchor grid, vectorised (see ``_AnchorGrid.candidates``): every other anchor is below
the foreground threshold with every box and is no box's best, so it changes none of the
numbers, and the matcher sees the same IoU values it sees in training.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_anchor_generator, build_backbone
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, pairwise_iou
from torch import Tensor

from retinanet_ext.data.box_sizes import GroundTruthBoxes, resized
from retinanet_ext.modeling.matching import build_anchor_matcher

__all__ = [
    "SIZE_BUCKETS",
    "AnchorLayout",
    "BoxCoverage",
    "FeatureShapes",
    "best_iou",
    "box_coverage",
    "build_anchor_layout",
    "coverage_at_training_resize",
    "feature_shapes",
    "one_thread",
    "training_resize",
    "training_sizes",
]

SIZE_BUCKETS = (("small", 0.0, 32.0), ("medium", 32.0, 96.0), ("large", 96.0, math.inf))
"""COCO's object sizes: sqrt(area) below 32, 32 to 96, and above 96 pixels."""


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: the work here is many small tensor ops, which gain nothing
    from more threads and lose much to their synchronisation on a busy machine (x6 here)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class FeatureShapes:
    """The backbone's outputs the head reads, and how the model pads its input."""

    shapes: list[ShapeSpec]
    size_divisibility: int


def feature_shapes(cfg: CfgNode) -> FeatureShapes:
    """Build the config's backbone once and read its feature strides and padding."""
    backbone = build_backbone(cfg)
    outputs = backbone.output_shape()
    missing = [f for f in cfg.MODEL.RETINANET.IN_FEATURES if f not in outputs]
    if missing:
        raise ValueError(f"MODEL.RETINANET.IN_FEATURES {list(cfg.MODEL.RETINANET.IN_FEATURES)}: "
                         f"{missing} not produced by the backbone, which gives {sorted(outputs)}.")
    return FeatureShapes(
        shapes=[outputs[f] for f in cfg.MODEL.RETINANET.IN_FEATURES],
        size_divisibility=int(backbone.size_divisibility),
    )


@dataclass
class AnchorLayout:
    """The model's anchor generator and matcher for one config."""

    anchor_generator: torch.nn.Module
    strides: list[int]
    size_divisibility: int
    matcher: Matcher
    foreground_threshold: float
    low_quality_matches: bool


def _foreground_threshold(cfg: CfgNode) -> float:
    thresholds = list(cfg.MODEL.RETINANET.IOU_THRESHOLDS)
    labels = list(cfg.MODEL.RETINANET.IOU_LABELS)
    # Detectron2's Matcher: interval i is [thresholds[i-1], thresholds[i]) with labels[i].
    bounds = [-math.inf] + thresholds
    return next((bounds[i] for i, label in enumerate(labels) if label == 1), math.inf)


def build_anchor_layout(cfg: CfgNode, shapes: FeatureShapes | None = None) -> AnchorLayout:
    """The anchors and matcher the model builds from ``cfg`` (``shapes`` saves rebuilding
    the backbone when only the anchor keys changed)."""
    shapes = shapes or feature_shapes(cfg)
    matcher = build_anchor_matcher(cfg)
    return AnchorLayout(
        anchor_generator=build_anchor_generator(cfg, shapes.shapes),
        strides=[int(s.stride) for s in shapes.shapes],
        size_divisibility=shapes.size_divisibility,
        matcher=matcher,
        foreground_threshold=_foreground_threshold(cfg),
        low_quality_matches=bool(matcher.allow_low_quality_matches),
    )


class _AnchorGrid:
    """The anchors of one padded input size, each level as Tensor[H, W, A, 4] (XYXY)."""

    def __init__(self, layout: AnchorLayout, height: int, width: int) -> None:
        divisor = layout.size_divisibility
        if divisor > 0:
            height, width = (math.ceil(height / divisor) * divisor,
                             math.ceil(width / divisor) * divisor)
        grid_sizes = [(math.ceil(height / s), math.ceil(width / s)) for s in layout.strides]
        with torch.no_grad():
            per_level = layout.anchor_generator([torch.empty(1, 0, h, w) for h, w in grid_sizes])
        self.levels = [b.tensor.reshape(h, w, -1, 4)
                       for b, (h, w) in zip(per_level, grid_sizes, strict=True)]
        self.all = torch.cat([b.tensor for b in per_level])
        self.offsets = np.cumsum([0] + [len(b) for b in per_level]).tolist()
        self.grid_order = all(self._is_location_major(level) for level in self.levels)

    @staticmethod
    def _is_location_major(level: Tensor) -> bool:
        """Anchors ordered row by row, then within a location (Detectron2's order)?"""
        centres = (level[..., :2] + level[..., 2:]) / 2  # (H, W, A, 2)
        return bool(torch.allclose(centres, centres[:, :, :1], atol=1e-3)
                    and torch.allclose(centres[..., 0], centres[:1, :, :, 0], atol=1e-3)
                    and torch.allclose(centres[..., 1], centres[:, :1, :, 1], atol=1e-3))

    @staticmethod
    def _centres(level: Tensor) -> tuple[Tensor, Tensor]:
        """(x centres of the columns (W,), y centres of the rows (H,))."""
        return ((level[0, :, 0, 0] + level[0, :, 0, 2]) / 2,
                (level[:, 0, 0, 1] + level[:, 0, 0, 3]) / 2)

    @staticmethod
    def _nearest(centres: Tensor, values: Tensor) -> Tensor:
        """Index of the centre nearest to each value (ties: the lower index)."""
        upper = torch.searchsorted(centres, values).clamp(1, len(centres) - 1)
        lower = upper - 1
        pick_upper = (centres[upper] - values).abs() < (values - centres[lower]).abs()
        return torch.where(pick_upper, upper, lower) if len(centres) > 1 else lower.clamp(min=0)

    def nearest_iou(self, boxes: Tensor) -> list[Tensor]:
        """Per level, Tensor[G, A]: each box's IoU with the anchor of each shape whose
        centre is nearest the box's. For one shape, IoU only falls as the centres move
        apart along x or y, so these hold every box's best IoU."""
        centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        result = []
        for level in self.levels:
            columns, rows = self._centres(level)
            anchors = level[self._nearest(rows, centre_y), self._nearest(columns, centre_x)]
            result.append(_elementwise_iou(boxes[:, None], anchors))
        return result

    def best_iou(self, boxes: Tensor) -> Tensor:
        """Tensor[G]: each box's best IoU over all anchors (see :meth:`nearest_iou`)."""
        return torch.cat(self.nearest_iou(boxes), dim=1).amax(dim=1)

    def candidate_pairs(self, boxes: Tensor, threshold: float) -> tuple[Tensor, Tensor] | None:
        """(box index, anchor index) pairs, Tensor[P] each: the anchors that decide every
        number of each box of ``boxes`` (Tensor[G, 4]).

        Those are, per level and anchor shape: where the shape can reach IoU ``threshold``
        with the box, the positions near enough to; and where it gives the box's best IoU
        (:meth:`nearest_iou`), every position that overlaps the box (the low-quality
        matches: a box inside an anchor, or an anchor inside a box, has the same IoU at
        many positions). Any other anchor is below ``threshold`` with the box and not its
        best, so it changes none of the box's numbers.
        """
        if not self.grid_order:  # an anchor generator with another order: every anchor
            return None
        nearest = self.nearest_iou(boxes)
        best = torch.cat(nearest, dim=1).amax(dim=1)
        box_ids, anchor_ids = [], []
        for index, level in enumerate(self.levels):
            pairs = self._level_pairs(level, boxes, nearest[index], best, threshold)
            box_ids.append(pairs[0])
            anchor_ids.append(self.offsets[index] + pairs[1])
        return torch.cat(box_ids), torch.cat(anchor_ids)

    def _level_pairs(self, level: Tensor, boxes: Tensor, nearest: Tensor, best: Tensor,
                     threshold: float) -> tuple[Tensor, Tensor]:
        width, num_shapes = level.shape[1:3]
        columns, rows = self._centres(level)
        centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        ids, owners = [], []
        shapes = level[0, 0, :, 2:] - level[0, 0, :, :2]  # (A, 2): anchor width, height
        sizes = boxes[:, 2:] - boxes[:, :2]  # (G, 2)
        overlap = torch.minimum(sizes[:, None], shapes[None])  # (G, A, 2), centred
        area = sizes.prod(dim=1)[:, None] + shapes.prod(dim=1)  # (G, A): sum of both areas
        centred_iou = overlap.prod(dim=2) / (area - overlap.prod(dim=2))
        full_reach = (sizes[:, None] + shapes[None]) / 2  # centre distance where overlap ends
        # IoU >= t needs overlap >= t * max(areas), so along x an overlap width of at least
        # t * max(areas) / (the smaller height): the centres must be closer than this.
        larger = torch.maximum(sizes.prod(dim=1)[:, None], shapes.prod(dim=1)[None])
        needed = threshold * larger[..., None] / overlap.flip(-1)
        windows = [(centred_iou >= threshold, full_reach - needed),
                   (nearest >= best[:, None] * (1 - 1e-6), full_reach)]
        for selected, reach in windows:
            box_ids, shape_of = torch.nonzero(selected, as_tuple=True)
            reach = reach[box_ids, shape_of]  # (P, 2)
            x_range = _index_range(columns, centre_x[box_ids], reach[:, 0])
            y_range = _index_range(rows, centre_y[box_ids], reach[:, 1])
            window, positions = _window_positions(x_range, y_range, width)
            ids.append(positions * num_shapes + shape_of[window])
            owners.append(box_ids[window])
        return torch.cat(owners), torch.cat(ids)


def _elementwise_iou(boxes: Tensor, anchors: Tensor) -> Tensor:
    """IoU of broadcast pairs of XYXY boxes (``boxes`` [..., 4] with ``anchors`` [..., 4])."""
    lower = torch.maximum(boxes[..., :2], anchors[..., :2])
    upper = torch.minimum(boxes[..., 2:], anchors[..., 2:])
    inter = (upper - lower).clamp(min=0).prod(dim=-1)
    area = ((boxes[..., 2:] - boxes[..., :2]).prod(dim=-1)
            + (anchors[..., 2:] - anchors[..., :2]).prod(dim=-1))
    return inter / (area - inter)


def _index_range(centres: Tensor, values: Tensor, reach: Tensor) -> tuple[Tensor, Tensor]:
    """[start, stop) of the centres strictly within ``reach`` of each value."""
    return (torch.searchsorted(centres, values - reach, right=True),
            torch.searchsorted(centres, values + reach))


def _window_positions(x_range: tuple[Tensor, Tensor], y_range: tuple[Tensor, Tensor],
                      width: int) -> tuple[Tensor, Tensor]:
    """(window index, flat position row * width + column) of every position of each window."""
    widths = (x_range[1] - x_range[0]).clamp(min=0)
    counts = widths * (y_range[1] - y_range[0]).clamp(min=0)
    window = torch.repeat_interleave(torch.arange(len(counts)), counts)
    step = torch.arange(int(counts.sum())) - (torch.cumsum(counts, 0) - counts)[window]
    row_width = widths[window].clamp(min=1)
    column = x_range[0][window] + step % row_width
    row = y_range[0][window] + torch.div(step, row_width, rounding_mode="floor")
    return window, row * width + column


@dataclass
class BoxCoverage:
    """Per-box results for N boxes (all arrays of length N).

    Attributes:
        classes: int64, class ids.
        sizes: float64, sqrt(area) in pixels at the measured input size.
        aspect_ratios: float64, height / width.
        best_iou: float64, the best IoU over all anchors.
        foreground: int64, anchors assigned at IoU >= the foreground threshold.
        foreground_training: int64, anchors training assigns (with low-quality matches
            when they are on).
        foreground_threshold: the threshold.
    """

    classes: np.ndarray
    sizes: np.ndarray
    aspect_ratios: np.ndarray
    best_iou: np.ndarray
    foreground: np.ndarray
    foreground_training: np.ndarray
    foreground_threshold: float

    @staticmethod
    def concatenate(parts: Sequence[BoxCoverage]) -> BoxCoverage:
        fields = ("classes", "sizes", "aspect_ratios", "best_iou", "foreground",
                  "foreground_training")
        return BoxCoverage(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in fields},
                           foreground_threshold=parts[0].foreground_threshold)


def _image_coverage(boxes: Tensor, anchors: Tensor, layout: AnchorLayout) -> Tensor:
    """Tensor[G, 3]: best IoU, foreground, foreground_training of one image's boxes."""
    iou = pairwise_iou(Boxes(boxes), Boxes(anchors))  # (G, R')
    best_anchor_iou, nearest_box = iou.max(dim=0)  # each anchor's box: the one it overlaps most
    at_threshold = best_anchor_iou >= layout.foreground_threshold
    foreground = torch.bincount(nearest_box[at_threshold], minlength=len(boxes))
    matched, labels = layout.matcher(iou)
    foreground_training = torch.bincount(matched[labels == 1], minlength=len(boxes))
    return torch.stack([iou.max(dim=1).values.double(), foreground.double(),
                        foreground_training.double()], dim=1)


def _match_all_anchors(gt: GroundTruthBoxes, members: np.ndarray, boxes: Tensor,
                       grid: _AnchorGrid, layout: AnchorLayout, results: np.ndarray) -> None:
    for image in np.unique(gt.image_index[members]).tolist():
        own = members[gt.image_index[members] == image]
        results[own] = _image_coverage(boxes[own], grid.all, layout).numpy()


def _images_by_padded_size(gt: GroundTruthBoxes, divisor: int) -> dict[tuple[int, int], list]:
    groups: dict[tuple[int, int], list] = {}
    for image, (height, width) in enumerate(gt.image_sizes.tolist()):
        if divisor > 0:
            height, width = (math.ceil(height / divisor) * divisor,
                             math.ceil(width / divisor) * divisor)
        groups.setdefault((height, width), []).append(image)
    return groups


def box_coverage(gt: GroundTruthBoxes, layout: AnchorLayout) -> BoxCoverage:
    """Match every box of ``gt`` (already at the model's input size) to the anchors,
    image by image with the model's matcher, on the anchors that decide the numbers
    (``_AnchorGrid.candidate_pairs``, found for all images of one size at once)."""
    results = np.zeros((len(gt), 3))
    boxes = torch.as_tensor(gt.boxes, dtype=torch.float32)
    with torch.no_grad():
        for size, images in _images_by_padded_size(gt, layout.size_divisibility).items():
            members = np.nonzero(np.isin(gt.image_index, images))[0]  # sorted by image
            if len(members) == 0:
                continue
            grid = _AnchorGrid(layout, *size)
            pairs = grid.candidate_pairs(boxes[members], layout.foreground_threshold)
            if pairs is None:
                _match_all_anchors(gt, members, boxes, grid, layout, results)
                continue
            box_ids, anchor_ids = pairs
            order = torch.argsort(box_ids, stable=True)  # members, hence images, in order
            box_ids, anchor_ids = box_ids[order], anchor_ids[order]
            member_image = gt.image_index[members]
            starts = np.searchsorted(member_image, member_image, side="left")
            ends = np.searchsorted(member_image, member_image, side="right")
            pair_bounds = torch.searchsorted(box_ids, torch.arange(len(members) + 1)).tolist()
            for first in np.unique(starts).tolist():
                last = int(ends[first])
                ids = torch.unique(anchor_ids[pair_bounds[first]:pair_bounds[last]])
                own = members[first:last]
                results[own] = _image_coverage(boxes[own], grid.all[ids], layout).numpy()
    return BoxCoverage(
        classes=gt.classes.copy(), sizes=gt.sizes, aspect_ratios=gt.aspect_ratios,
        best_iou=results[:, 0], foreground=results[:, 1].astype(np.int64),
        foreground_training=results[:, 2].astype(np.int64),
        foreground_threshold=layout.foreground_threshold,
    )


def best_iou(gt: GroundTruthBoxes, layout: AnchorLayout) -> np.ndarray:
    """float64[N]: each box's best IoU over all anchors, for all boxes at once.

    The anchors of one shape sit on an evenly spaced grid, read from the anchor generator's
    output (origin and spacing per level); each box's best anchor of a shape is the one at
    the grid position nearest its centre (see ``_AnchorGrid.nearest_iou``), clamped to the
    grid of its own padded image.
    """
    if len(gt) == 0:
        return np.zeros(0)
    reference = _AnchorGrid(layout, 2 * max(layout.strides), 2 * max(layout.strides))
    if not reference.grid_order:
        return box_coverage(gt, layout).best_iou
    divisor = max(layout.size_divisibility, 1)
    padded = np.ceil(gt.image_sizes[gt.image_index] / divisor) * divisor  # (N, 2): h, w
    boxes = torch.as_tensor(gt.boxes, dtype=torch.float32)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (N, 2): x, y
    best = torch.zeros(len(boxes))
    for level, stride in zip(reference.levels, layout.strides, strict=True):
        columns, rows = _AnchorGrid._centres(level)
        origin = torch.stack([columns[0], rows[0]])
        step = torch.stack([columns[1] - columns[0], rows[1] - rows[0]])
        cells = torch.as_tensor(np.ceil(padded[:, ::-1] / stride).copy(), dtype=torch.float32)
        index = torch.minimum(torch.round((centres - origin) / step).clamp(min=0), cells - 1)
        anchor_centres = origin + index * step  # (N, 2)
        shapes = level[0, 0, :, 2:] - level[0, 0, :, :2]  # (A, 2)
        anchors = torch.cat([anchor_centres[:, None] - shapes / 2,
                             anchor_centres[:, None] + shapes / 2], dim=2)  # (N, A, 4)
        best = torch.maximum(best, _elementwise_iou(boxes[:, None], anchors).amax(dim=1))
    return best.double().numpy()


def training_sizes(cfg: CfgNode) -> list[int]:
    """The shorter-edge sizes training resizes to (``MIN_SIZE_TRAIN``; for a ``range``, its
    ends)."""
    return sorted({int(s) for s in cfg.INPUT.MIN_SIZE_TRAIN})


def training_resize(gt: GroundTruthBoxes, cfg: CfgNode, input_scale: float = 1.0,
                    seed: int = 0) -> GroundTruthBoxes:
    """The boxes at the training resize: each image's shorter edge drawn as training draws
    it (one of ``MIN_SIZE_TRAIN``, or uniformly in its ``range``), with ``seed`` so that
    two configs are compared on the same draws; times ``input_scale``."""
    sizes = [int(s) for s in cfg.INPUT.MIN_SIZE_TRAIN]
    rng = np.random.default_rng(seed)
    count = len(gt.image_sizes)
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range" and len(sizes) == 2:
        edges = rng.integers(sizes[0], sizes[1] + 1, size=count)
    else:
        edges = np.asarray(sizes)[rng.integers(0, len(sizes), size=count)]
    return resized(gt, np.round(edges * input_scale).astype(np.int64),
                   round(cfg.INPUT.MAX_SIZE_TRAIN * input_scale))


def coverage_at_training_resize(
    gt: GroundTruthBoxes, cfg: CfgNode, layout: AnchorLayout, input_scale: float = 1.0
) -> BoxCoverage:
    """:func:`box_coverage` of ``gt`` at the training resize (:func:`training_resize`)."""
    return box_coverage(training_resize(gt, cfg, input_scale), layout)
