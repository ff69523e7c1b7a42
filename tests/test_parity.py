"""Interchangeability with Detectron2's RetinaNet: checkpoints, detections, losses, gradients.

Both models are built in this process from the same Detectron2 config (ours only switches
the meta-architecture, backbone and anchor generator names), Detectron2's weights are
loaded into ours, and both see the same inputs.
"""

from __future__ import annotations

import pytest
import torch
from _modeling_helpers import make_instances, random_image, retinanet_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from retinanet_ext.modeling import RetinaNetExt
from retinanet_ext.modeling.losses import CIoUBoxLoss, DIoUBoxLoss, GIoUBoxLoss


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    theirs = build_model(retinanet_cfg(ours=False))
    ours = build_model(retinanet_cfg(ours=True))
    assert isinstance(ours, RetinaNetExt) and type(theirs).__name__ == "RetinaNet"
    with torch.no_grad():
        # Raise the class logits (std about 1 across P3 locations at this init) so that
        # thousands of candidates pass the 0.05 threshold: top-k per level and NMS then
        # have real work to do. Scores stay far from 1, so there are no ties.
        theirs.head.cls_score.bias.normal_(-2.5, 0.5)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _inputs(with_height: bool = True) -> list[dict]:
    first = {"image": random_image(128, 160, seed=11)}
    if with_height:
        first.update(height=200, width=250)
    return [
        first,
        {"image": random_image(96, 128, seed=12)},
        {"image": random_image(120, 100, seed=13)},  # padded to 128 x 128
    ]


def _training_inputs() -> list[dict]:
    inputs = _inputs(with_height=False)
    inputs[0]["instances"] = make_instances(
        (128, 160), [[10, 20, 70, 90], [60, 30, 150, 120], [0, 0, 30, 25]], [1, 17, 79]
    )
    inputs[1]["instances"] = make_instances((96, 128), [], [])  # no annotations
    inputs[2]["instances"] = make_instances((120, 100), [[5, 40, 95, 118]], [3])
    return inputs


def test_state_dict_keys_and_shapes_are_detectron2s(models) -> None:
    ours, theirs = models
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    theirs_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert ours_shapes == theirs_shapes
    assert any(k.startswith("backbone.bottom_up.") for k in ours_shapes)
    for key in ("backbone.fpn_lateral3.weight", "backbone.fpn_output5.bias",
                "backbone.top_block.p6.weight", "backbone.top_block.p7.bias",
                "head.cls_subnet.6.weight", "head.bbox_subnet.0.bias",
                "head.cls_score.weight", "head.bbox_pred.bias"):
        assert key in ours_shapes, key
    assert "pixel_mean" not in ours_shapes  # non-persistent buffers, as in Detectron2
    # Ours loads into theirs strictly too.
    result = theirs.load_state_dict(ours.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_r50_state_dict_keys_are_detectron2s() -> None:
    cfg_theirs = retinanet_cfg(ours=False, depth=50)
    cfg_ours = retinanet_cfg(ours=True, depth=50)
    theirs = build_model(cfg_theirs).state_dict()
    ours = build_model(cfg_ours).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_detections_equal_detectron2(models) -> None:
    ours, theirs = models
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        ours_out = ours(_inputs())
        theirs_out = theirs(_inputs())
    for ours_image, theirs_image in zip(ours_out, theirs_out, strict=True):
        mine, ref = ours_image["instances"], theirs_image["instances"]
        assert mine.image_size == ref.image_size
        assert len(ref) >= 50  # non-trivial: thousands of candidates went through NMS
        assert len(mine) == len(ref)
        assert torch.equal(mine.pred_classes, ref.pred_classes)
        torch.testing.assert_close(mine.scores, ref.scores, rtol=0, atol=1e-5)
        torch.testing.assert_close(
            mine.pred_boxes.tensor, ref.pred_boxes.tensor, rtol=0, atol=1e-3
        )


def test_detections_equal_detectron2_with_small_topk_and_low_threshold(models) -> None:
    ours, theirs = models
    ours.eval()
    theirs.eval()
    for model in (ours, theirs):
        model.test_topk_candidates, model.test_score_thresh = 40, 0.01
        model.max_detections_per_image = 1000
    try:
        with torch.no_grad():
            ours_out = ours(_inputs())
            theirs_out = theirs(_inputs())
    finally:
        for model in (ours, theirs):
            model.test_topk_candidates, model.test_score_thresh = 1000, 0.05
            model.max_detections_per_image = 100
    for ours_image, theirs_image in zip(ours_out, theirs_out, strict=True):
        mine, ref = ours_image["instances"], theirs_image["instances"]
        assert 40 < len(ref) <= 5 * 40  # fewer than all levels' top-k: NMS removed some
        assert len(mine) == len(ref)
        assert torch.equal(mine.pred_classes, ref.pred_classes)
        torch.testing.assert_close(mine.scores, ref.scores, rtol=0, atol=1e-5)
        torch.testing.assert_close(
            mine.pred_boxes.tensor, ref.pred_boxes.tensor, rtol=0, atol=1e-3
        )


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


def _losses_and_grads(model, inputs) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad()
    with EventStorage():
        losses = model(inputs)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def _assert_training_parity(ours, theirs) -> None:
    ours_losses, ours_grads = _losses_and_grads(ours, _training_inputs())
    theirs_losses, theirs_grads = _losses_and_grads(theirs, _training_inputs())
    assert set(ours_losses) == set(theirs_losses) == {"loss_cls", "loss_box_reg"}
    for name, value in theirs_losses.items():
        assert value.item() > 0
        torch.testing.assert_close(ours_losses[name], value, rtol=1e-5, atol=0)
    assert set(ours_grads) == set(theirs_grads)
    assert len(theirs_grads) > 40  # stem and res2 are frozen (FREEZE_AT = 2)
    for name, grad in theirs_grads.items():
        assert _relative_error(ours_grads[name], grad) <= 1e-5, name


@pytest.mark.slow
def test_training_losses_and_gradients_equal_detectron2(models) -> None:
    ours, theirs = models
    # Two steps: the second also checks that the EMA normalisers moved the same way.
    for _ in range(2):
        _assert_training_parity(ours, theirs)
    assert ours.criterion.loss_normalizer.value == pytest.approx(theirs.loss_normalizer, rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("loss_type", "loss_class"),
    [("giou", GIoUBoxLoss), ("diou", DIoUBoxLoss), ("ciou", CIoUBoxLoss)],
)
def test_iou_box_losses_and_gradients_equal_detectron2(models, loss_type, loss_class) -> None:
    ours, theirs = models
    ours_loss, theirs_loss = ours.criterion.box_loss, theirs.box_reg_loss_type
    ours.criterion.box_loss, theirs.box_reg_loss_type = loss_class(weight=1.0), loss_type
    try:
        _assert_training_parity(ours, theirs)
    finally:
        ours.criterion.box_loss, theirs.box_reg_loss_type = ours_loss, theirs_loss
