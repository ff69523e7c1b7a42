"""RetinaNetExt end to end: config keys, build from config, training and inference contracts,
training visualisation."""

from __future__ import annotations

import pytest
import torch
from _modeling_helpers import make_instances, random_image, retinanet_cfg
from detectron2.modeling import build_model
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone.fpn import FPN
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from retinanet_ext import get_retinanet_ext_cfg
from retinanet_ext.modeling import RetinaNetExt, RetinaNetExtAnchorGenerator, RetinaNetExtHead
from retinanet_ext.modeling.losses import (
    BCELoss,
    ForegroundCountLossNormalizer,
    GIoUBoxLoss,
    SigmoidFocalLoss,
)
from retinanet_ext.modeling.matching import IoUAssigner

NUM_CLASSES = 6


@pytest.fixture(scope="module")
def model() -> RetinaNetExt:
    torch.manual_seed(0)
    return build_model(retinanet_cfg(ours=True, num_classes=NUM_CLASSES))


def _training_inputs() -> list[dict]:
    return [
        {
            "image": random_image(128, 160, seed=1),
            "instances": make_instances((128, 160), [[10, 20, 70, 90], [60, 30, 150, 120]], [1, 4]),
        },
        {"image": random_image(96, 128, seed=2), "instances": make_instances((96, 128), [], [])},
    ]


def test_new_config_keys_and_defaults() -> None:
    ext = get_retinanet_ext_cfg().MODEL.RETINANET_EXT
    assert dict(ext) == {
        "HEAD_NAME": "RetinaNetExtHead",
        "ASSIGNER": "IoUAssigner",
        "ATSS_TOPK": 9,
        "CLS_LOSS_NAME": "SigmoidFocalLoss",
        "QFL_BETA": 2.0,
        "VFL_ALPHA": 0.75,
        "VFL_GAMMA": 2.0,
        "GIOU_LOSS_WEIGHT": 1.0,
        "LOSS_NORMALIZER": "EMALossNormalizer",
        "LOSS_NORMALIZER_EMA_INIT": 100.0,
        "LOSS_NORMALIZER_EMA_MOMENTUM": 0.9,
        "ALLOW_LOW_QUALITY_MATCHES": True,
        "P6_IN_FEATURE": "res5",
        "PRECISION": "float32",
        "CHANNELS_LAST": False,
        "COMPILE": False,
        "SOFT_NMS_METHOD": "",
        "SOFT_NMS_SIGMA": 0.5,
        "SOFT_NMS_MIN_SCORE": 0.001,
        "ANCHORS_FROM_DATA": False,
        "ANCHOR_SCALES_PER_OCTAVE": 1,
        "CHECKPOINT_MAX_TO_KEEP": 0,
        "NUM_THREADS": 0,
        "EMA": {"ENABLED": False, "DECAY": 0.9998, "WARMUP_ITERS": 2000},
    }


def test_builds_our_components_from_config(model: RetinaNetExt) -> None:
    assert isinstance(model, RetinaNetExt)
    assert isinstance(model.backbone, FPN)
    assert isinstance(model.anchor_generator, RetinaNetExtAnchorGenerator)
    assert isinstance(model.head, RetinaNetExtHead)
    assert isinstance(model.criterion.assigner, IoUAssigner)
    assert isinstance(model.criterion.cls_loss, SigmoidFocalLoss)
    assert model.head_in_features == ["p3", "p4", "p5", "p6", "p7"]
    assert model.head.cls_score.out_channels == 9 * NUM_CLASSES
    assert model.device == torch.device("cpu")


def test_preprocess_normalises_and_pads(model: RetinaNetExt) -> None:
    image = random_image(50, 70, seed=3)
    images = model.preprocess_image([{"image": image}])
    assert images.tensor.shape == (1, 3, 64, 96)
    assert images.image_sizes == [(50, 70)]
    expected = (image - torch.tensor([103.53, 116.28, 123.675])[:, None, None]) / 1.0
    torch.testing.assert_close(images.tensor[0, :, :50, :70], expected)
    assert not images.tensor[0, :, 50:].any()


@pytest.mark.slow
def test_training_returns_losses_and_trains_empty_images(model: RetinaNetExt) -> None:
    model.train()
    with EventStorage():
        losses = model(_training_inputs())
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values())
    sum(losses.values()).backward()
    grad = model.head.cls_score.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    model.zero_grad()

    empty_only = [_training_inputs()[1]]
    with EventStorage():
        losses = model(empty_only)
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_cls"].item() > 0
    sum(losses.values()).backward()
    model.zero_grad()


def test_training_without_instances_is_explained(model: RetinaNetExt) -> None:
    model.train()
    with pytest.raises(ValueError, match="needs 'instances'"):
        model([{"image": random_image(64, 64, seed=0)}])


def test_inference_contract_and_rescaling(model: RetinaNetExt) -> None:
    model.eval()
    with torch.no_grad():
        model.head.cls_score.bias.fill_(-1.0)  # make detections plentiful
        outputs = model(
            [
                {"image": random_image(128, 160, seed=4), "height": 256, "width": 320},
                {"image": random_image(96, 128, seed=5)},
            ]
        )
    assert len(outputs) == 2
    first, second = outputs[0]["instances"], outputs[1]["instances"]
    assert isinstance(first, Instances)
    assert set(first.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
    assert first.image_size == (256, 320) and second.image_size == (96, 128)
    assert 0 < len(first) <= 100
    boxes = first.pred_boxes.tensor
    assert boxes[:, 0].min() >= 0 and boxes[:, 2].max() <= 320 and boxes[:, 3].max() <= 256
    assert (first.scores[:-1] >= first.scores[1:]).all()
    assert first.pred_classes.max() < NUM_CLASSES and first.pred_classes.dtype == torch.int64
    # The first image was 128 x 160, reported at 256 x 320: boxes beyond 160 px exist.
    assert boxes[:, 2].max() > 160


def test_components_swap_from_config() -> None:
    cfg = retinanet_cfg(ours=True, num_classes=NUM_CLASSES)
    cfg.MODEL.RETINANET_EXT.CLS_LOSS_NAME = "BCELoss"
    cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "giou"
    cfg.MODEL.RETINANET_EXT.LOSS_NORMALIZER = "ForegroundCountLossNormalizer"
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"  # Detectron2's, also accepted
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    model = build_model(cfg)
    assert isinstance(model.criterion.cls_loss, BCELoss)
    assert isinstance(model.criterion.box_loss, GIoUBoxLoss)
    assert isinstance(model.criterion.loss_normalizer, ForegroundCountLossNormalizer)
    assert isinstance(model.anchor_generator, DefaultAnchorGenerator)
    model.train()
    with EventStorage():
        losses = model(_training_inputs())
    assert all(torch.isfinite(v) for v in losses.values())


def test_ground_truth_class_out_of_range_is_explained(model: RetinaNetExt) -> None:
    model.train()
    inputs = [{"image": random_image(64, 64, seed=0)}]
    inputs[0]["instances"] = make_instances((64, 64), [[0, 0, 30, 30]], [NUM_CLASSES])
    with pytest.raises(ValueError, match="NUM_CLASSES"), EventStorage():
        model(inputs)


class _ImageRecorder(EventStorage):
    """An event storage that keeps the images the model puts, through the public method."""

    def __init__(self, start_iter: int = 0) -> None:
        super().__init__(start_iter)
        self.images: list[tuple[str, torch.Tensor]] = []

    def put_image(self, img_name: str, img_tensor) -> None:
        self.images.append((img_name, torch.as_tensor(img_tensor)))
        super().put_image(img_name, img_tensor)


@pytest.mark.parametrize(("vis_period", "iteration", "drawn"), [(0, 0, 0), (2, 3, 0), (2, 4, 1)])
def test_vis_period_draws_ground_truth_and_predictions(vis_period, iteration, drawn) -> None:
    cfg = retinanet_cfg(ours=True, num_classes=NUM_CLASSES)
    cfg.VIS_PERIOD = vis_period
    model = build_model(cfg)
    assert model.vis_period == vis_period
    model.train()
    with _ImageRecorder(start_iter=iteration) as storage:
        model(_training_inputs())
    assert len(storage.images) == drawn
    if drawn:
        name, image = storage.images[0]
        assert "GT bounding boxes" in name
        # ground truth above, predictions below, on the 128 x 160 first image (CHW)
        assert tuple(image.shape) == (3, 2 * 128, 160)


@pytest.mark.parametrize("norm", ["BN", "SyncBN"])
def test_head_batchnorm_is_one_per_level_as_in_detectron2(norm) -> None:
    cfg = retinanet_cfg(ours=True, num_classes=NUM_CLASSES)
    cfg.MODEL.RETINANET.NORM = norm
    ours = build_model(cfg).head
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    theirs = build_model(cfg).head
    ours_keys = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert ours_keys == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert "cls_subnet.1.4.running_mean" in ours_keys  # one BN per level (5 levels)
    if norm == "BN":
        ours.load_state_dict(theirs.state_dict())
        features = [torch.randn(1, 256, s, s) for s in (16, 8, 4, 2, 1)]
        ours.eval(), theirs.eval()
        with torch.no_grad():
            for mine, ref in zip(ours(features), theirs(features), strict=True):
                for a, b in zip(mine, ref, strict=True):
                    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda() -> None:
    cfg = retinanet_cfg(ours=True, num_classes=NUM_CLASSES)
    cfg.MODEL.DEVICE = "cuda"
    model = build_model(cfg)
    assert model.device.type == "cuda"
    model.train()
    with EventStorage():
        losses = model(_training_inputs())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        model.head.cls_score.bias.fill_(-1.0)
        (output,) = model([{"image": random_image(128, 160, seed=4)}])
    assert output["instances"].pred_boxes.tensor.device.type == "cuda"
    assert len(output["instances"]) > 0


def test_channels_last_gives_the_float32_detections() -> None:
    cfg = retinanet_cfg(ours=True, num_classes=NUM_CLASSES)
    torch.manual_seed(0)
    reference = build_model(cfg).eval()
    cfg.MODEL.RETINANET_EXT.CHANNELS_LAST = True
    channels_last = build_model(cfg).eval()
    channels_last.load_state_dict(reference.state_dict())
    conv = channels_last.head.cls_subnet[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    inputs = [{"image": random_image(128, 160, seed=4)}]
    with torch.no_grad():
        for model in (reference, channels_last):
            model.head.cls_score.bias.fill_(-1.0)
        ours = channels_last(inputs)[0]["instances"]
        theirs = reference(inputs)[0]["instances"]
    assert len(ours) == len(theirs) > 0
    torch.testing.assert_close(ours.scores, theirs.scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.pred_boxes.tensor, theirs.pred_boxes.tensor, rtol=0,
                               atol=1e-3)


@pytest.mark.once
@pytest.mark.slow
def test_compiled_network_keeps_keys_and_detections() -> None:
    cfg = retinanet_cfg(ours=True, num_classes=NUM_CLASSES)
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    torch.manual_seed(0)
    reference = build_model(cfg).eval()
    cfg.MODEL.RETINANET_EXT.COMPILE = True
    compiled = build_model(cfg).eval()
    assert list(compiled.state_dict()) == list(reference.state_dict())
    compiled.load_state_dict(reference.state_dict())
    inputs = [{"image": random_image(96, 128, seed=4)}]
    with torch.no_grad():
        for model in (reference, compiled):
            model.head.cls_score.bias.fill_(-1.0)
        ours = compiled(inputs)[0]["instances"]
        theirs = reference(inputs)[0]["instances"]
    assert len(ours) == len(theirs) > 0
    torch.testing.assert_close(ours.scores, theirs.scores, rtol=0, atol=1e-4)


@pytest.mark.parametrize("precision, native, expected", [
    ("bfloat16", True, True), ("auto", True, True), ("auto", False, False),
    ("float32", True, False),
])
def test_bfloat16_on_a_cpu_comes_with_channels_last(precision, native, expected, monkeypatch):
    from retinanet_ext.modeling import precision as precision_module

    monkeypatch.setattr(precision_module, "cpu_bf16_flags",
                        lambda: ("avx512_bf16",) if native else ())
    cfg = retinanet_cfg(ours=True, num_classes=NUM_CLASSES)
    cfg.MODEL.RETINANET_EXT.PRECISION = precision
    model = build_model(cfg)
    assert model.channels_last is expected
    conv = model.backbone.bottom_up.stem.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) is expected


def test_reduced_precision_on_cuda_comes_with_channels_last() -> None:
    from retinanet_ext.modeling.meta_arch import reduced_precision_layout

    for dtype in (torch.float16, torch.bfloat16):
        assert reduced_precision_layout(dtype, "cuda") is True
        assert reduced_precision_layout(dtype, "cuda:1") is True
    assert reduced_precision_layout(torch.bfloat16, "cpu") is True
    assert reduced_precision_layout(torch.bfloat16, "mps") is False
    assert reduced_precision_layout(torch.float32, "cuda") is False
