"""ResNet + Detectron2's FPN + P6/P7 from our builder: names, strides, shapes, the top-down
maths, the P6 input and the checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _modeling_helpers import retinanet_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7


def _build(depth: int = 18, **ext: str) -> FPN:
    cfg = retinanet_cfg(ours=True, depth=depth)
    for key, value in ext.items():
        cfg.MODEL.RETINANET_EXT[key] = value
    backbone = build_backbone(cfg)
    assert isinstance(backbone, FPN) and isinstance(backbone.top_block, LastLevelP6P7)
    return backbone.eval()


def test_output_names_strides_channels_and_shapes() -> None:
    backbone = _build()
    shapes = backbone.output_shape()
    assert list(shapes) == ["p3", "p4", "p5", "p6", "p7"]
    assert [s.stride for s in shapes.values()] == [8, 16, 32, 64, 128]
    assert all(s.channels == 256 for s in shapes.values())
    assert backbone.size_divisibility == 32
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, 128, 160))
    sizes = {name: tuple(f.shape[-2:]) for name, f in features.items()}
    assert sizes == {"p3": (16, 20), "p4": (8, 10), "p5": (4, 5), "p6": (2, 3), "p7": (1, 2)}
    assert all(f.shape[:2] == (2, 256) for f in features.values())


def test_top_down_pathway_and_p6_on_c5_by_hand() -> None:
    backbone = _build()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = backbone(x)
        c = backbone.bottom_up(x)
        m5 = backbone.fpn_lateral5(c["res5"])
        m4 = backbone.fpn_lateral4(c["res4"]) + F.interpolate(m5, scale_factor=2.0, mode="nearest")
        m3 = backbone.fpn_lateral3(c["res3"]) + F.interpolate(m4, scale_factor=2.0, mode="nearest")
        p6 = backbone.top_block.p6(c["res5"])
        expected = {
            "p3": backbone.fpn_output3(m3),
            "p4": backbone.fpn_output4(m4),
            "p5": backbone.fpn_output5(m5),
            "p6": p6,
            "p7": backbone.top_block.p7(F.relu(p6)),
        }
    assert backbone.top_block.p6.in_channels == 512  # C5 of ResNet-18
    for name, tensor in expected.items():
        torch.testing.assert_close(features[name], tensor, rtol=0, atol=0)


def test_p6_on_p5_option() -> None:
    backbone = _build(P6_IN_FEATURE="p5")
    assert backbone.top_block.p6.in_channels == 256
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = backbone(x)
        expected_p6 = backbone.top_block.p6(features["p5"])
    torch.testing.assert_close(features["p6"], expected_p6, rtol=0, atol=0)
    assert tuple(features["p7"].shape[-2:]) == (1, 1)


def test_bad_p6_input_is_explained() -> None:
    with pytest.raises(ValueError, match="P6_IN_FEATURE"):
        _build(P6_IN_FEATURE="p4")


@pytest.mark.parametrize(("depth", "c5_channels"), [(18, 512), (34, 512), (50, 2048)])
def test_resnet_depth_from_config(depth: int, c5_channels: int) -> None:
    backbone = _build(depth=depth)
    assert backbone.bottom_up.output_shape()["res5"].channels == c5_channels
    assert backbone.fpn_lateral5.in_channels == c5_channels
    num_res4_blocks = {18: 2, 34: 6, 50: 6}[depth]
    assert len(backbone.bottom_up.res4) == num_res4_blocks


def test_basic_block_depth_without_res2_64_is_explained() -> None:
    cfg = retinanet_cfg(ours=True, depth=18)
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
    with pytest.raises(ValueError, match="RES2_OUT_CHANNELS to 64"):
        build_backbone(cfg)


def test_state_dict_keys_equal_detectron2_retinanet_backbone() -> None:
    ours = build_backbone(retinanet_cfg(ours=True))
    theirs = build_backbone(retinanet_cfg(ours=False))
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    theirs_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert ours_shapes == theirs_shapes
    assert ours.output_shape() == theirs.output_shape()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ours_features, theirs_features = ours.eval()(x), theirs.eval()(x)
    for name in theirs_features:
        torch.testing.assert_close(ours_features[name], theirs_features[name], rtol=0, atol=0)


def test_fpn_rejects_missing_bottom_up_features() -> None:
    cfg = retinanet_cfg(ours=True)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4", "res5"]
    with pytest.raises(ValueError, match="MODEL.FPN.IN_FEATURES"):
        build_backbone(cfg, ShapeSpec(channels=3))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("MODEL.FPN.IN_FEATURES", ["res3", "res5"], "twice the previous one"),
        ("MODEL.FPN.FUSE_TYPE", "max", "MODEL.FPN.FUSE_TYPE"),
    ],
)
def test_fpn_settings_detectron2_asserts_are_explained(key, value, message) -> None:
    cfg = retinanet_cfg(ours=True)
    cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=message):
        build_backbone(cfg)
