"""MODEL.RETINANET_EXT.PRECISION: which dtype where, refusals on CPUs without native bf16,
and bf16 models that still detect like the float32 one."""

from __future__ import annotations

import pytest
import torch
from _modeling_helpers import make_instances, random_image, retinanet_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from retinanet_ext.modeling import precision

native_bf16 = pytest.mark.skipif(
    not precision.cpu_bf16_flags(),
    reason=f"this {precision.cpu_description()} has no native bf16: bf16 would be emulated",
)


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU has the given native bf16 flags."""

    def set_flags(*flags: str) -> None:
        monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: tuple(flags))

    return set_flags


def test_float32_is_float32_everywhere() -> None:
    assert precision.resolve_precision("float32", "cpu") is torch.float32
    assert precision.resolve_precision("float32", "cuda") is torch.float32


def test_bf16_on_a_cpu_with_native_bf16(cpu_flags) -> None:
    cpu_flags("amx_bf16")
    assert precision.resolve_precision("bfloat16", "cpu") is torch.bfloat16
    assert precision.resolve_precision("auto", "cpu") is torch.bfloat16


def test_bf16_refused_on_a_cpu_without_it_and_auto_falls_back(cpu_flags, caplog) -> None:
    cpu_flags()
    with pytest.raises(ValueError) as error:
        precision.resolve_precision("bfloat16", "cpu")
    message = str(error.value)
    assert "CPU capability" in message and "no avx512_bf16/amx_bf16" in message
    assert "float32" in message and "auto" in message and "onnxruntime" in message
    assert precision.resolve_precision("auto", "cpu") is torch.float32
    assert "no native bf16, running float32" in caplog.text


def test_float16_needs_cuda_and_unknown_names_are_refused(cpu_flags) -> None:
    cpu_flags("avx512_bf16")
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        precision.resolve_precision("float16", "cpu")
    assert precision.resolve_precision("float16", "cuda") is torch.float16
    assert precision.resolve_precision("float16", "cuda:1") is torch.float16
    with pytest.raises(ValueError, match="PRECISION = 'half'"):
        precision.resolve_precision("half", "cpu")


def test_model_build_refuses_bf16_without_native_support(cpu_flags) -> None:
    cpu_flags()
    cfg = retinanet_cfg(ours=True, num_classes=3)
    cfg.MODEL.RETINANET_EXT.PRECISION = "bfloat16"
    with pytest.raises(ValueError, match="no native bf16"):
        build_model(cfg)


@pytest.mark.parametrize(
    ("setting", "flags", "expected"),
    [("float32", ("amx_bf16",), torch.float32), ("auto", ("amx_bf16",), torch.bfloat16),
     ("auto", (), torch.float32), ("bfloat16", ("avx512_bf16",), torch.bfloat16)],
)
def test_network_dtype_is_the_precision_as_resolved_on_this_cpu(cpu_flags, setting, flags,
                                                               expected) -> None:
    # what the demo reports as the precision it ran in
    cpu_flags(*flags)
    cfg = retinanet_cfg(ours=True, num_classes=3)
    cfg.MODEL.RETINANET_EXT.PRECISION = setting
    assert build_model(cfg).network_dtype is expected


def test_precision_is_resolved_once_per_model(cpu_flags, caplog, monkeypatch) -> None:
    # Resolved when the model is built, then passed on: forward passes, the memory layout
    # and the demo's report use the result; "auto"'s fallback warning shows once.
    from retinanet_ext.modeling import meta_arch

    cpu_flags()
    calls = []
    resolve = precision.resolve_precision
    monkeypatch.setattr(meta_arch, "resolve_precision",
                        lambda *args: calls.append(args) or resolve(*args))
    cfg = retinanet_cfg(ours=True, num_classes=3)
    cfg.MODEL.RETINANET_EXT.PRECISION = "auto"
    model = build_model(cfg).eval()
    with torch.no_grad():
        model([{"image": random_image(64, 96, seed=1)}])
        model([{"image": random_image(64, 96, seed=2)}])
    assert calls == [("auto", "cpu")]
    assert model.network_dtype is torch.float32 and not model.channels_last
    assert caplog.text.count("no native bf16, running float32") == 1


def _pair(num_classes: int = 3):
    torch.manual_seed(0)
    cfg = retinanet_cfg(ours=True, num_classes=num_classes)
    fp32 = build_model(cfg)
    cfg.MODEL.RETINANET_EXT.PRECISION = "bfloat16"
    bf16 = build_model(cfg)
    bf16.load_state_dict(fp32.state_dict())
    return fp32, bf16


@native_bf16
def test_bf16_inference_runs_the_network_in_bf16_and_detects_like_float32() -> None:
    fp32, bf16 = _pair()
    head_dtypes = []
    bf16.head.register_forward_hook(lambda m, i, out: head_dtypes.append(out[0][0].dtype))
    inputs = [{"image": random_image(160, 224, seed=1)}]
    for model in (fp32, bf16):
        model.eval()
        with torch.no_grad():
            model.head.cls_score.bias.fill_(-2.0)  # plenty of detections
    with torch.no_grad():
        ours = bf16(inputs)[0]["instances"]
        reference = fp32(inputs)[0]["instances"]
    assert head_dtypes == [torch.bfloat16]
    assert ours.scores.dtype == torch.float32 and ours.pred_boxes.tensor.dtype == torch.float32
    # An untrained model's scores are nearly tied, so NMS may keep a few other boxes.
    assert len(reference) >= 90 and abs(len(ours) - len(reference)) <= 10
    # bf16 keeps ~3 significant digits: the best scores agree to 1e-2
    torch.testing.assert_close(ours.scores[:10], reference.scores[:10], rtol=0, atol=1e-2)


@native_bf16
def test_bf16_training_step_gives_float32_losses_close_to_float32() -> None:
    fp32, bf16 = _pair()
    inputs = [{
        "image": random_image(128, 160, seed=2),
        "instances": make_instances((128, 160), [[10, 20, 70, 90], [60, 30, 150, 120]], [1, 2]),
    }]
    losses = {}
    for name, model in (("fp32", fp32), ("bf16", bf16)):
        model.train()
        with EventStorage():
            losses[name] = model(inputs)
        sum(losses[name].values()).backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    for key, value in losses["fp32"].items():
        assert losses["bf16"][key].dtype == torch.float32
        assert losses["bf16"][key].item() == pytest.approx(value.item(), rel=0.05)


def test_float16_on_cuda_trains_with_detectron2s_gradient_scaler() -> None:
    from retinanet_ext.engine.trainer import with_gradient_scaler

    cfg = retinanet_cfg(ours=True, num_classes=3)
    cfg.freeze()
    assert with_gradient_scaler(cfg) is cfg  # float32 on a CPU: untouched
    for device, value, amp in (("cuda", "float16", True), ("cuda", "bfloat16", False),
                               ("cuda", "float32", False)):
        changed = cfg.clone()
        changed.defrost()
        changed.MODEL.DEVICE, changed.MODEL.RETINANET_EXT.PRECISION = device, value
        changed.freeze()
        result = with_gradient_scaler(changed)
        assert result.SOLVER.AMP.ENABLED is amp, (device, value)
        assert result.is_frozen() and not changed.SOLVER.AMP.ENABLED  # a copy, still frozen


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_float16_training_on_cuda_uses_a_gradient_scaler(tmp_path) -> None:
    from _tiny_training import register_synthetic, synthetic_dataset, tiny_cfg
    from detectron2.engine import AMPTrainer

    from retinanet_ext.engine import Trainer

    register_synthetic(synthetic_dataset(tmp_path / "data"), "fp16_cuda_train", "fp16_cuda_val")
    cfg = tiny_cfg(tmp_path / "out", "fp16_cuda_train", "fp16_cuda_val",
                   "MODEL.DEVICE", "cuda", "MODEL.RETINANET_EXT.PRECISION", "float16",
                   "SOLVER.MAX_ITER", "5")
    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, AMPTrainer)  # DefaultTrainer's own attribute
    trainer.train()
    assert trainer._trainer.grad_scaler.get_scale() > 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
