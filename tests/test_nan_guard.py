"""The NaN/Inf guard: a non-finite loss or gradient at a chosen iteration stops training with an
error naming the iteration, the loss term or parameter, the learning rate and the batch's
files; the last good checkpoint is intact."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _checkpoint_helpers import REPO_ROOT, load_tool

from retinanet_ext.checkpoint import load_weights, nonfinite_weights
from retinanet_ext.engine import Trainer, TrainingDivergedError, load_config

kill_soak = load_tool("kill_soak")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    kill_soak.prepare_data(str(folder))
    return folder


def make_trainer(output: Path, max_iter: int = 8) -> Trainer:
    opts = kill_soak.tiny_training_opts(str(output), max_iter, period=2, keep=0)
    cfg = load_config(str(kill_soak.QUICK_CONFIG), opts)
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer


class Sabotage:
    """At iteration ``at``: records the batch's files and the bytes of the last checkpoint,
    then makes the loss (``what="loss"``) or one gradient (``"grad"``) non-finite."""

    def __init__(self, trainer: Trainer, at: int, what: str, value: float) -> None:
        self.trainer, self.at, self.what, self.value = trainer, at, what, value
        self.files: list[str] = []
        self.checkpoint_bytes: bytes = b""
        model = trainer.checkpointer.model
        self.param_name, self.param = next(iter(model.named_parameters()))
        model.register_forward_hook(self.after_forward)
        trainer.scheduler.optimizer.register_step_pre_hook(self.before_step)

    def after_forward(self, module, args, output):
        if not module.training or self.trainer.iter != self.at:
            return None
        self.files = [d["file_name"] for d in args[0]]
        self.checkpoint_bytes = Path(self.trainer.checkpointer.get_checkpoint_file()).read_bytes()
        if self.what == "loss":
            return {**output, "loss_cls": output["loss_cls"] * self.value}
        return None

    def before_step(self, optimizer, args, kwargs) -> None:
        if self.what == "grad" and self.trainer.iter == self.at:
            self.param.grad.view(-1)[0] = self.value


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_nonfinite_loss_names_the_iteration_term_and_files(
    data_dir: Path, tmp_path: Path, value: float
) -> None:
    trainer = make_trainer(tmp_path / "out")
    sabotage = Sabotage(trainer, at=5, what="loss", value=value)
    with pytest.raises(TrainingDivergedError) as error:
        trainer.train()
    message = str(error.value)
    assert "training diverged at iteration 5: loss_cls is " + str(value) in message
    assert "loss_box_reg" in message  # the finite terms, for comparison
    assert "learning rate 0.001" in message
    assert len(sabotage.files) == 2 and all(f in message for f in sabotage.files)
    assert "detectron2#550" in message and "SOLVER.BASE_LR" in message
    assert_last_good_checkpoint_intact(tmp_path / "out", "model_0000003.pth", sabotage)


def test_nonfinite_gradient_names_the_parameter(data_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "out")
    sabotage = Sabotage(trainer, at=4, what="grad", value=math.nan)
    with pytest.raises(TrainingDivergedError) as error:
        trainer.train()
    message = str(error.value)
    assert "training diverged at iteration 4: the gradient of " + sabotage.param_name in message
    assert all(f in message for f in sabotage.files) and len(sabotage.files) == 2
    assert_last_good_checkpoint_intact(tmp_path / "out", "model_0000003.pth", sabotage)


def assert_last_good_checkpoint_intact(output: Path, name: str, sabotage: Sabotage) -> None:
    assert (output / "last_checkpoint").read_text() == name
    assert (output / name).read_bytes() == sabotage.checkpoint_bytes
    assert not (output / "model_final.pth").exists()
    model = Trainer.build_model(sabotage.trainer.cfg)
    assert load_weights(model, str(output / name))["iteration"] == 3
    assert not nonfinite_weights(model.state_dict())
    assert not nonfinite_weights(sabotage.trainer.checkpointer.model.state_dict())


def test_training_without_trouble_is_untouched(data_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "out", max_iter=3)
    trainer.train()
    assert (tmp_path / "out" / "model_final.pth").is_file()
    assert torch.is_grad_enabled()


@pytest.mark.slow
def test_train_net_prints_one_error_line(data_dir: Path, tmp_path: Path) -> None:
    """A learning rate of 1000 diverges within a few iterations: exit 2, one error line."""
    opts = kill_soak.tiny_training_opts(str(tmp_path / "out"), 20, period=2, keep=0)
    opts[opts.index("SOLVER.BASE_LR") + 1] = "1000.0"
    opts[opts.index("DATASETS.TRAIN") + 1] = "('shapes',)"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), "--config-file",
         str(kill_soak.QUICK_CONFIG), "--dataset",
         f"shapes=coco:{data_dir / 'train.json'}:{data_dir / 'train'}", *opts],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "training diverged at iteration" in errors[0]
    assert "learning rate 1000" in errors[0] and str(data_dir / "train") in errors[0]
    assert "Traceback" not in result.stderr


def test_huge_but_finite_gradients_are_no_divergence() -> None:
    # Their norm overflows float32 (the guard's fast check), but every gradient is finite.
    from retinanet_ext.engine.guard import NonFiniteGuard

    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = NonFiniteGuard(model, optimizer, 0.1, 2)
    guard._param_names = {id(p): name for name, p in model.named_parameters()}  # before_train's
    for param in model.parameters():
        param.grad = torch.full_like(param, 3e38)
    guard._before_step(optimizer, (), {})  # no error
    model.bias.grad[0] = float("nan")
    with pytest.raises(TrainingDivergedError, match="the gradient of bias is not finite"):
        guard._before_step(optimizer, (), {})
