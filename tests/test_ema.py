"""EMA of the weights (retinanet_ext/engine/ema.py): hand-computed averages, the decay ramp,
checkpoints, ``--resume``, and that the Trainer's evaluation sees the EMA weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from detectron2.engine import HookBase, hooks
from torch import nn

import retinanet_ext  # noqa: F401  (registers the components)
from retinanet_ext.checkpoint import CheckpointError, load_weights, read_checkpoint
from retinanet_ext.engine import ConfigError, Trainer
from retinanet_ext.engine.ema import (
    EMA_CHECKPOINT_KEY,
    EMAHook,
    ModelEMA,
    build_model_ema,
    ema_decay,
    ema_model_weights,
    use_ema_weights,
)
from tests._tiny_training import register_synthetic, synthetic_dataset, tiny_cfg


def _linear(value: float) -> nn.Linear:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def _set(model: nn.Linear, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)


def test_constant_decay_three_steps_by_hand() -> None:
    model = _linear(1.0)
    ema = ModelEMA(model, decay=0.5, warmup_iters=0)
    expected = [1.0,                     # first update copies
                0.5 * 1.0 + 0.5 * 2.0,   # = 1.5
                0.5 * 1.5 + 0.5 * 4.0]   # = 2.75
    for value, want in zip([1.0, 2.0, 4.0], expected, strict=True):
        _set(model, value)
        ema.update(model)
        assert ema.module.weight.item() == pytest.approx(want, abs=1e-7)
    assert ema.num_updates == 3
    assert model.weight.item() == 4.0  # the trained model is not touched


def test_warmup_ramp_three_steps_by_hand() -> None:
    # d_t = 0.5 * (1 - exp(-t / 1)), t = updates so far: d_1 = 0.316060279, d_2 = 0.432332358.
    model = _linear(1.0)
    ema = ModelEMA(model, decay=0.5, warmup_iters=1)
    expected = [1.0,
                0.31606027941427883 * 1.0 + (1 - 0.31606027941427883) * 2.0,   # 1.683939721
                0.43233235838169365 * 1.6839397205857212
                + (1 - 0.43233235838169365) * 4.0]                               # 2.998692197
    decays = []
    for value, want in zip([1.0, 2.0, 4.0], expected, strict=True):
        _set(model, value)
        decays.append(ema.current_decay())
        ema.update(model)
        assert ema.module.weight.item() == pytest.approx(want, abs=1e-6)
    assert decays == pytest.approx([0.0, 0.31606027941427883, 0.43233235838169365])
    assert ema_decay(0.9998, 400, 2000) == pytest.approx(0.9998 * (1 - math.exp(-0.2)))
    assert ema_decay(0.9998, 400, 0) == 0.9998


def test_buffers_are_averaged_and_counters_copied() -> None:
    model = nn.BatchNorm1d(1)
    ema = ModelEMA(model, decay=0.5, warmup_iters=0)
    for mean, count in ((1.0, 10), (2.0, 20), (4.0, 40)):
        model.running_mean.fill_(mean)
        model.num_batches_tracked.fill_(count)
        ema.update(model)
    assert ema.module.running_mean.item() == pytest.approx(2.75)
    assert ema.module.num_batches_tracked.item() == 40


def test_state_dict_round_trip_and_mismatch() -> None:
    model = _linear(1.0)
    ema = ModelEMA(model, decay=0.5)
    for value in (1.0, 3.0):
        _set(model, value)
        ema.update(model)
    state = ema.state_dict()
    assert set(state) == {"n_averaged", "module.weight"}
    restored = ModelEMA(_linear(0.0), decay=0.5)
    restored.load_state_dict(state)
    assert restored.num_updates == 2
    assert restored.module.weight.item() == pytest.approx(2.0)
    assert ema_model_weights({EMA_CHECKPOINT_KEY: state})["weight"].item() == pytest.approx(2.0)
    assert ema_model_weights({"model": {}}) is None
    checkpoint = {"model": {"weight": torch.zeros(1, 1)}, "iteration": 5, EMA_CHECKPOINT_KEY: state}
    preferred = use_ema_weights(checkpoint, "x.pth")
    assert preferred["model"]["weight"].item() == pytest.approx(2.0)
    assert preferred["iteration"] == 5 and checkpoint["model"]["weight"].item() == 0.0
    assert use_ema_weights({"model": {}}, "y.pth") == {"model": {}}
    with pytest.raises(CheckpointError, match="does not fit this model"):
        ModelEMA(nn.Linear(2, 1), decay=0.5).load_state_dict(state)


def test_config_errors_name_the_key(tmp_path: Path, new_name) -> None:
    info = synthetic_dataset(tmp_path / "data")
    train, val = new_name("train"), new_name("val")
    register_synthetic(info, train, val)
    for key, value in (("DECAY", "1.0"), ("WARMUP_ITERS", "-5")):
        cfg = tiny_cfg(tmp_path / "out", train, val, f"MODEL.RETINANET_EXT.EMA.{key}", value)
        with pytest.raises(ConfigError, match=f"MODEL.RETINANET_EXT.EMA.{key}"):
            build_model_ema(cfg, _linear(0.0))


def test_load_weights_prefers_the_ema(tmp_path: Path) -> None:
    path = tmp_path / "with_ema.pth"
    torch.save({"model": {"weight": torch.full((1, 1), 1.0)},
                EMA_CHECKPOINT_KEY: {"n_averaged": torch.tensor(3),
                                     "module.weight": torch.full((1, 1), 7.0)}}, path)
    model = _linear(0.0)
    load_weights(model, str(path))
    assert model.weight.item() == 7.0


# ----------------------------------------------------------------------------- the Trainer
class _RecordWeights(HookBase):
    """Keeps a copy of the trained model's state after every step (the last hook)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def after_step(self) -> None:
        model = self.trainer.checkpointer.model
        self.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})


def _expected_ema(states: list[dict], decay: float, start: dict | None = None) -> dict:
    """EMA by hand over the recorded states: float tensors averaged, counters copied."""
    ema = dict(start) if start is not None else None
    for state in states:
        if ema is None:
            ema = dict(state)
            continue
        ema = {k: decay * ema[k] + (1 - decay) * v if v.is_floating_point() else v
               for k, v in state.items()}
    return ema


def _assert_state_close(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    differing = [key for key, value in expected.items()
                 if not torch.allclose(actual[key].float(), value.float(), rtol=1e-5, atol=1e-6)]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


def _run(cfg, resume: bool, monkeypatch) -> tuple[Trainer, _RecordWeights, list[dict]]:
    """Train ``cfg``; returns the trainer, the per-step weights, and the weights each
    evaluation saw (``Trainer.test`` records its model instead of running the evaluator)."""
    evaluated: list[dict] = []

    def recording_test(cls, cfg, model, evaluators=None):
        evaluated.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"bbox": {"AP": float(len(evaluated))}}

    monkeypatch.setattr(Trainer, "test", classmethod(recording_test))
    trainer = Trainer(cfg)
    recorder = _RecordWeights()
    trainer.register_hooks([recorder])
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer, recorder, evaluated


@pytest.mark.slow
def test_trainer_evaluates_checkpoints_and_resumes_the_ema(tmp_path: Path, new_name,
                                                           monkeypatch) -> None:
    info = synthetic_dataset(tmp_path / "data")
    train, val = new_name("train"), new_name("val")
    register_synthetic(info, train, val)
    out = tmp_path / "out"
    opts = ["SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "2",
            "MODEL.RETINANET_EXT.EMA.ENABLED", "True", "MODEL.RETINANET_EXT.EMA.DECAY", "0.5",
            "MODEL.RETINANET_EXT.EMA.WARMUP_ITERS", "0"]
    trainer, recorder, evaluated = _run(
        tiny_cfg(out, train, val, "SOLVER.MAX_ITER", "3", *opts), False, monkeypatch)

    names = [type(h).__name__ for h in trainer._hooks]
    assert names.index("EMAHook") < names.index("PeriodicCheckpointer") < names.index("EvalHook")
    assert sum(isinstance(h, EMAHook) for h in trainer._hooks) == 1
    assert sum(isinstance(h, hooks.EvalHook) for h in trainer._hooks) == 1
    assert isinstance(trainer.checkpointer.checkpointables[EMA_CHECKPOINT_KEY], ModelEMA)

    # Evaluations after step 2 (EVAL_PERIOD) and after the last step see the EMA weights.
    ema_2 = _expected_ema(recorder.states[:2], 0.5)
    ema_3 = _expected_ema(recorder.states[:3], 0.5)
    assert len(evaluated) == 2
    assert trainer.ema_eval_results == {"bbox": {"AP": 2.0}}  # the last EMA evaluation's
    _assert_state_close(evaluated[0], ema_2)
    _assert_state_close(evaluated[1], ema_3)
    weight = "head.cls_score.weight"
    assert not torch.allclose(evaluated[1][weight], recorder.states[-1][weight])

    # Every checkpoint carries the EMA of its step; the model entry stays the trained weights.
    periodic = read_checkpoint(str(out / "model_0000001.pth"))
    final = read_checkpoint(str(out / "model_final.pth"))
    assert int(periodic[EMA_CHECKPOINT_KEY]["n_averaged"]) == 2
    _assert_state_close(ema_model_weights(periodic), ema_2)
    _assert_state_close(ema_model_weights(final), ema_3)
    _assert_state_close(final["model"], recorder.states[-1])

    # --resume restores the EMA: one more step continues the average from ema_3.
    resumed, recorder, evaluated = _run(
        tiny_cfg(out, train, val, "SOLVER.MAX_ITER", "4", *opts), True, monkeypatch)
    ema = resumed.checkpointer.checkpointables[EMA_CHECKPOINT_KEY]
    assert ema.num_updates == 4
    _assert_state_close(evaluated[-1], _expected_ema(recorder.states, 0.5, start=ema_3))
