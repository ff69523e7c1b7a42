"""RetinaNetExtAnchorGenerator: hand-worked anchors, and equality with Detectron2's."""

from __future__ import annotations

import math

import pytest
import torch
from _modeling_helpers import retinanet_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator, build_anchor_generator

from retinanet_ext.modeling.anchors import RetinaNetExtAnchorGenerator, expand_octave_scales

RETINANET_STRIDES = [8, 16, 32, 64, 128]
# Detectron2's Base-RetinaNet.yaml expression for the sizes.
D2_RETINANET_SIZES = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]]


def _features(sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    return [torch.zeros(1, 1, h, w) for h, w in sizes]


def test_two_by_two_map_square_anchor_by_hand() -> None:
    generator = RetinaNetExtAnchorGenerator(
        sizes=[[32]], aspect_ratios=[[1.0]], strides=[16], offset=0.0
    )
    (anchors,) = generator(_features([(2, 2)]))
    # Centres (0, 0), (16, 0), (0, 16), (16, 16), row by row; half size 16.
    expected = torch.tensor(
        [
            [-16.0, -16.0, 16.0, 16.0],
            [0.0, -16.0, 32.0, 16.0],
            [-16.0, 0.0, 16.0, 32.0],
            [0.0, 0.0, 32.0, 32.0],
        ]
    )
    assert torch.equal(anchors.tensor, expected)


def test_two_by_two_map_three_ratios_half_offset_by_hand() -> None:
    generator = RetinaNetExtAnchorGenerator(
        sizes=[[32]], aspect_ratios=[[0.5, 1.0, 2.0]], strides=[16], offset=0.5
    )
    (anchors,) = generator(_features([(2, 2)]))
    # Ratio h/w = 0.5: w = sqrt(32^2 / 0.5) = 45.2548, h = 22.6274; ratio 2 swaps them.
    half_long, half_short = math.sqrt(2048) / 2, math.sqrt(512) / 2  # 22.627, 11.314
    cell = torch.tensor(
        [
            [-half_long, -half_short, half_long, half_short],
            [-16.0, -16.0, 16.0, 16.0],
            [-half_short, -half_long, half_short, half_long],
        ]
    )
    # Offset 0.5: centres (8, 8), (24, 8), (8, 24), (24, 24).
    centres = torch.tensor([[8.0, 8.0], [24.0, 8.0], [8.0, 24.0], [24.0, 24.0]])
    expected = (centres.repeat(1, 2)[:, None, :] + cell[None]).reshape(-1, 4)
    assert anchors.tensor.shape == (12, 4)
    torch.testing.assert_close(anchors.tensor, expected, rtol=0, atol=1e-5)
    assert anchors.tensor[0].tolist() == pytest.approx(
        [8 - 22.6274, 8 - 11.3137, 8 + 22.6274, 8 + 11.3137], abs=1e-4
    )


@pytest.mark.parametrize("offset", [0.0, 0.5, 0.3])
def test_equals_detectron2_default_anchor_generator(offset: float) -> None:
    ours = RetinaNetExtAnchorGenerator(
        sizes=D2_RETINANET_SIZES,
        aspect_ratios=[0.5, 1.0, 2.0],
        strides=RETINANET_STRIDES,
        offset=offset,
    )
    theirs = DefaultAnchorGenerator(
        sizes=D2_RETINANET_SIZES,
        aspect_ratios=[0.5, 1.0, 2.0],
        strides=RETINANET_STRIDES,
        offset=offset,
    )
    sizes = [(100, 167), (50, 84), (25, 42), (13, 21), (7, 11)]
    for ours_level, theirs_level in zip(
        ours(_features(sizes)), theirs(_features(sizes)), strict=True
    ):
        assert torch.equal(ours_level.tensor, theirs_level.tensor)


def test_octave_scales_equal_detectron2_eval_sizes() -> None:
    expanded = expand_octave_scales([[32], [64], [128], [256], [512]], scales_per_octave=3)
    assert expanded == D2_RETINANET_SIZES  # exact float equality
    ours = RetinaNetExtAnchorGenerator(
        sizes=[[32], [64], [128], [256], [512]],
        aspect_ratios=[0.5, 1.0, 2.0],
        strides=RETINANET_STRIDES,
        scales_per_octave=3,
        offset=0.0,
    )
    theirs = DefaultAnchorGenerator(
        sizes=D2_RETINANET_SIZES,
        aspect_ratios=[0.5, 1.0, 2.0],
        strides=RETINANET_STRIDES,
        offset=0.0,
    )
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    for ours_level, theirs_level in zip(
        ours(_features(sizes)), theirs(_features(sizes)), strict=True
    ):
        assert torch.equal(ours_level.tensor, theirs_level.tensor)


def test_built_from_config_like_detectron2() -> None:
    cfg = retinanet_cfg(ours=True)
    shapes = [ShapeSpec(channels=256, stride=s) for s in RETINANET_STRIDES]
    ours = build_anchor_generator(cfg, shapes)
    assert isinstance(ours, RetinaNetExtAnchorGenerator)
    assert ours.num_anchors == [9] * 5
    assert ours.num_cell_anchors == [9] * 5
    assert ours.box_dim == 4
    cfg_d2 = retinanet_cfg(ours=False)
    theirs = build_anchor_generator(cfg_d2, shapes)
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    for ours_level, theirs_level in zip(
        ours(_features(sizes)), theirs(_features(sizes)), strict=True
    ):
        assert torch.equal(ours_level.tensor, theirs_level.tensor)


def test_state_dict_has_no_keys() -> None:
    generator = RetinaNetExtAnchorGenerator(
        sizes=[32], aspect_ratios=[0.5, 1.0, 2.0], strides=[8, 16], offset=0.0
    )
    assert list(generator.state_dict().keys()) == []
    anchors, _ = generator(_features([(2, 2), (1, 1)]))
    assert anchors.tensor.shape == (12, 4)


def test_anchor_grids_are_cached_per_size() -> None:
    generator = RetinaNetExtAnchorGenerator(
        sizes=[32], aspect_ratios=[1.0], strides=[8], offset=0.0, max_cached_grids=2
    )
    first = generator(_features([(3, 4)]))[0].tensor
    again = generator(_features([(3, 4)]))[0].tensor
    other = generator(_features([(4, 4)]))[0].tensor
    assert again is first
    assert other is not first and other.shape == (16, 4)
    assert generator(_features([(3, 4)]))[0].tensor is first  # now the most recently used
    generator(_features([(5, 5)]))  # evicts the least recently used, (4, 4)
    assert generator(_features([(3, 4)]))[0].tensor is first
    assert generator(_features([(4, 4)]))[0].tensor is not other


def test_cell_anchor_areas_and_ratios() -> None:
    generator = RetinaNetExtAnchorGenerator(
        sizes=[64.0], aspect_ratios=[0.5, 1.0, 2.0], strides=[8], offset=0.0
    )
    (cell,) = generator.cell_anchors
    widths, heights = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    torch.testing.assert_close(widths * heights, torch.full((3,), 64.0**2))
    torch.testing.assert_close(heights / widths, torch.tensor([0.5, 1.0, 2.0]))


def test_mismatched_per_level_lists_are_rejected() -> None:
    with pytest.raises(ValueError, match="2 lists but there are 3 feature levels"):
        RetinaNetExtAnchorGenerator(
            sizes=[[32], [64]], aspect_ratios=[1.0], strides=[8, 16, 32], offset=0.0
        )
    with pytest.raises(ValueError, match="OFFSET"):
        RetinaNetExtAnchorGenerator(sizes=[32], aspect_ratios=[1.0], strides=[8], offset=1.0)
    with pytest.raises(ValueError, match="ASPECT_RATIOS must be non-empty and > 0"):
        RetinaNetExtAnchorGenerator(sizes=[32], aspect_ratios=[0.0], strides=[8], offset=0.0)
