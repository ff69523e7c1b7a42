"""Crash-proof checkpoints: atomic writes, --resume past a damaged newest checkpoint (but not a
hostile one), no non-finite weights saved, only the last N periodic checkpoints kept."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _checkpoint_helpers import build_tiny_model, load_tool, write_hostile_pkl, write_hostile_pth

from retinanet_ext.checkpoint import (
    CheckpointError,
    RetinaNetExtCheckpointer,
    UnsafeCheckpointError,
    atomic_write,
    load_weights,
)
from retinanet_ext.engine import Trainer, load_config

kill_soak = load_tool("kill_soak")


def training_cfg(output: Path, max_iter: int, period: int = 2, keep: int = 0):
    opts = kill_soak.tiny_training_opts(str(output), max_iter, period, keep)
    cfg = load_config(str(kill_soak.QUICK_CONFIG), opts)
    cfg.freeze()
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """OUTPUT_DIR of 4 iterations, saved every 2: model_0000001, model_0000003, model_final."""
    root = tmp_path_factory.mktemp("trained")
    kill_soak.prepare_data(str(root / "data"))
    trainer = Trainer(training_cfg(root / "out", max_iter=4))
    trainer.resume_or_load(resume=False)
    trainer.train()
    return root / "out"


@pytest.fixture
def output(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(trained, copy)
    return copy


def resumed_trainer(output: Path, max_iter: int = 6) -> Trainer:
    trainer = Trainer(training_cfg(output, max_iter=max_iter))
    trainer.resume_or_load(resume=True)
    return trainer


def test_training_writes_atomically_and_resumes(trained: Path, output: Path) -> None:
    names = sorted(p.name for p in trained.iterdir())
    assert {"model_0000001.pth", "model_0000003.pth", "model_final.pth"} <= set(names)
    assert not [n for n in names if n.endswith(".tmp")]
    assert (trained / "last_checkpoint").read_text() == "model_final.pth"
    assert resumed_trainer(output).start_iter == 4


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing"])
def test_resume_skips_a_damaged_newest_checkpoint(output: Path, caplog, damage: str) -> None:
    final = output / "model_final.pth"
    if damage == "truncated":
        final.write_bytes(final.read_bytes()[:1_000_000])
    elif damage == "empty":
        final.write_bytes(b"")
    else:
        final.unlink()
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.checkpoint"):
        trainer = resumed_trainer(output)
    assert trainer.start_iter == 4  # model_0000003.pth: iteration 3 finished
    assert "Skipping checkpoint" in caplog.text and str(final) in caplog.text
    assert "Resuming from" in caplog.text and "model_0000003.pth" in caplog.text


def test_resume_takes_the_newest_readable_one(output: Path) -> None:
    for name in ("model_final.pth", "model_0000003.pth"):
        (output / name).write_bytes(b"garbage")
    assert resumed_trainer(output).start_iter == 2


def test_resume_with_nothing_readable_is_an_error(output: Path) -> None:
    for path in output.glob("*.pth"):
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        resumed_trainer(output)


@pytest.mark.parametrize("planted", ["evil.pkl", "model_0000005.pth"])
def test_resume_refuses_a_planted_hostile_checkpoint(output: Path, planted: str) -> None:
    sentinel = output.parent / "PWNED"
    if planted.endswith(".pkl"):
        write_hostile_pkl(output / planted, sentinel)
    else:
        write_hostile_pth(output / planted, sentinel)
    (output / "last_checkpoint").write_text(planted)
    with pytest.raises(UnsafeCheckpointError, match=f"{planted} is refused"):
        resumed_trainer(output)
    assert not sentinel.exists()


@pytest.mark.parametrize("name", ["../evil.pkl", "/tmp/evil.pkl", ".."])
def test_resume_refuses_last_checkpoint_naming_a_file_elsewhere(output: Path, name: str) -> None:
    (output / "last_checkpoint").write_text(name)
    with pytest.raises(UnsafeCheckpointError, match="not a file name in"):
        resumed_trainer(output)


def test_resume_removes_what_an_interrupted_save_left(output: Path) -> None:
    leftover = output / ".model_0000005.pth.4242.0123abcd.tmp"
    leftover.write_bytes(b"half a checkpoint")
    resumed_trainer(output)
    assert not leftover.exists()


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "model_final.pth"
    target.write_bytes(b"old")

    def fail_halfway(f) -> None:
        f.write(b"new but incomp")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(target), fail_halfway)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_final.pth"]


def test_sigkill_while_writing_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model_final.pth"
    target.write_bytes(b"old")
    script = (
        "import sys, time\n"
        "from retinanet_ext.checkpoint import atomic_write\n"
        "def slowly(f):\n"
        "    f.write(b'new'); f.flush(); print('writing', flush=True); time.sleep(60)\n"
        f"atomic_write({str(target)!r}, slowly)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert target.read_bytes() == b"old"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model_final.pth"]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")  # never named .pth


def test_nonfinite_weights_are_not_saved(tmp_path: Path, caplog) -> None:
    model = build_tiny_model(seed=0)
    checkpointer = RetinaNetExtCheckpointer(model, str(tmp_path))
    checkpointer.save("model_final", iteration=1)
    good = (tmp_path / "model_final.pth").read_bytes()
    with torch.no_grad():
        model.head.cls_score.weight[0, 0, 0, 0] = float("nan")
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.checkpoint"):
        checkpointer.save("model_final", iteration=2)
        checkpointer.save("model_0000002", iteration=2)
    assert "Not saving" in caplog.text and "head.cls_score.weight" in caplog.text
    assert (tmp_path / "model_final.pth").read_bytes() == good
    assert not (tmp_path / "model_0000002.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert load_weights(build_tiny_model(seed=1), str(tmp_path / "model_final.pth")) == {
        "iteration": 1}


def test_only_the_last_n_periodic_checkpoints_are_kept(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    checkpointer = RetinaNetExtCheckpointer(model, str(tmp_path), max_to_keep=2)
    (tmp_path / "model_0000000.pth").write_bytes(b"from an earlier run")
    for iteration in (1, 3, 5, 7):
        checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
        time.sleep(0.01)
    checkpointer.save("model_final", iteration=7)
    names = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert names == ["model_0000005.pth", "model_0000007.pth", "model_final.pth"]


def test_keep_option_reaches_the_trainer(output: Path) -> None:
    trainer = Trainer(training_cfg(output, max_iter=6, keep=1))
    assert isinstance(trainer.checkpointer, RetinaNetExtCheckpointer)
    assert trainer.checkpointer.max_to_keep == 1
    assert "retinanet_ext_metadata" in trainer.checkpointer.checkpointables
