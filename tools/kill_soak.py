#!/usr/bin/env python
"""Kill soak: train a tiny model, SIGKILL it at random moments (also in the middle of
saving a checkpoint), resume, and check that nothing was lost.

    python tools/kill_soak.py                       # 10 rounds of 4 kills each
    python tools/kill_soak.py --rounds 1 --kills 3  # the CI version (tests/test_soak_kill.py)

Each round trains the project's Trainer (ResNet-18, 64 px synthetic images, batch 2) in a
child process with ``--resume``, checkpoints every ``--period`` iterations keeping the last
``--keep``, and saving made slow (``--save-seconds``, written in chunks) so that kills land
inside saves. The parent kills it ``--kills`` times, either at a random moment or while a
checkpoint is being written (alternately), then lets the last run finish. A round passes
when:

* the last run exits 0 and ``model_final.pth`` holds iteration ``MAX_ITER - 1``;
* every run after a kill starts at the iteration after the checkpoint ``last_checkpoint``
  named at the kill, and that checkpoint is not older than the last save that completed
  (nothing saved is lost); the iterations run cover 0 .. MAX_ITER - 1 without a gap;
* every checkpoint on disk loads (safely) with finite weights and the iteration in its name;
  no temporary file is left; at most ``--keep`` periodic checkpoints remain.

Exit status 0 when every round passed; one line per round and a summary on stdout.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICK_CONFIG = REPO_ROOT / "configs" / "retinanet_R18_FPN_quick.yaml"
PROGRESS = "progress.log"
DATASET_PREFIX = "kill_soak"


def tiny_training_opts(output_dir: str, max_iter: int, period: int, keep: int) -> list[str]:
    """Config overrides for a tiny training run on the synthetic data (~0.3 s/iteration)."""
    return [
        "DATASETS.TRAIN", f"('{DATASET_PREFIX}_train',)", "DATASETS.TEST", "()",
        "MODEL.RETINANET.NUM_CLASSES", "5", "MODEL.FPN.OUT_CHANNELS", "32",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.001", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "()", "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.CHECKPOINT_PERIOD", str(period),
        "MODEL.RETINANET_EXT.CHECKPOINT_MAX_TO_KEEP", str(keep),
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", output_dir, "SEED", "1",
    ]


def prepare_data(data_dir: str) -> None:
    """Write (or reuse) 8 synthetic 64x64 training images and register them."""
    from retinanet_ext.data.synthetic import (
        generate_synthetic_dataset,
        register_synthetic_dataset,
    )

    generate_synthetic_dataset(data_dir, num_train=8, num_val=2, image_size=64, seed=0)
    register_synthetic_dataset(data_dir, prefix=DATASET_PREFIX)


# ---------------------------------------------------------------------------------------
# The child: one training run, resumed from OUTPUT_DIR.
# ---------------------------------------------------------------------------------------


def _slow_saves(seconds: float) -> None:
    """Make ``torch.save`` into a file write in 10 chunks over ``seconds`` (this process only)."""
    import torch

    real_save = torch.save

    def slow_save(obj, f, *args, **kwargs):
        if not hasattr(f, "write"):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        step = len(data) // 10 + 1
        for start in range(0, len(data), step):
            f.write(data[start:start + step])
            f.flush()
            time.sleep(seconds / 10)

    torch.save = slow_save


def run_child(args: argparse.Namespace) -> int:
    from detectron2.engine import HookBase
    from detectron2.utils.logger import setup_logger

    import retinanet_ext  # noqa: F401
    from retinanet_ext.engine import Trainer, load_config

    class Progress(HookBase):
        """Appends ``start N`` and ``iter N`` lines (fsync'ed) after the checkpointer ran."""

        def __init__(self, path: str) -> None:
            self.path = path

        def _write(self, line: str) -> None:
            with open(self.path, "a") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())

        def before_train(self) -> None:
            self._write(f"start {self.trainer.start_iter}")

        def after_step(self) -> None:
            self._write(f"iter {self.trainer.iter}")

    setup_logger(name="retinanet_ext")
    setup_logger(name="fvcore")
    prepare_data(args.data)
    _slow_saves(args.save_seconds)
    cfg = load_config(str(QUICK_CONFIG), tiny_training_opts(
        args.child, args.max_iter, args.period, args.keep))
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.register_hooks([Progress(os.path.join(args.child, PROGRESS))])
    trainer.resume_or_load(resume=True)
    trainer.train()
    return 0


# ---------------------------------------------------------------------------------------
# The parent: kills, then checks.
# ---------------------------------------------------------------------------------------


@dataclass
class Round:
    output: Path
    kills: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _checkpoint_iteration(name: str, max_iter: int) -> int:
    if name == "model_final.pth":
        return max_iter - 1
    found = re.match(r"^model_(\d{7})\.pth$", name)
    return int(found.group(1)) if found else -2


def _tagged_iteration(output: Path, max_iter: int) -> int:
    tag = output / "last_checkpoint"
    return _checkpoint_iteration(tag.read_text().strip(), max_iter) if tag.exists() else -1


def _saving(output: Path) -> bool:
    return any(re.match(r"^\..+\.tmp$", p.name) for p in output.iterdir())


def _starts(output: Path) -> list[int]:
    """The start iteration of every run so far (``start N`` lines of the progress log)."""
    progress = output / PROGRESS
    if not progress.exists():
        return []
    return [int(line.split()[1]) for line in progress.read_text().splitlines()
            if line.startswith("start ")]


def _kill_once(child: subprocess.Popen, output: Path, runs_before: int, rng: random.Random,
               args: argparse.Namespace, during_save: bool) -> dict:
    """Wait until training started, then SIGKILL at a random moment or inside a save."""
    deadline = time.monotonic() + 300
    while child.poll() is None and len(_starts(output)) <= runs_before:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if during_save:  # inside the first, second or third save of this run
        for _ in range(rng.randint(1, 3)):
            while child.poll() is None and _saving(output) and time.monotonic() < deadline:
                time.sleep(0.01)
            while child.poll() is None and not _saving(output) and time.monotonic() < deadline:
                time.sleep(0.01)
        time.sleep(rng.uniform(0, args.save_seconds))
    else:
        time.sleep(rng.uniform(0, 8.0))
    in_save = _saving(output)
    if child.poll() is None:
        child.send_signal(signal.SIGKILL)
    child.wait()
    return {"mode": "save" if during_save else "random", "in_save": in_save,
            "exit": child.returncode, "tagged": _tagged_iteration(output, args.max_iter)}


def _child_command(output: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", str(output),
            "--data", args.data, "--max-iter", str(args.max_iter), "--period", str(args.period),
            "--keep", str(args.keep), "--save-seconds", str(args.save_seconds)]


def _segments(output: Path) -> list[list[int]]:
    """Per run: its start iteration followed by the iterations it finished."""
    runs: list[list[int]] = []
    for line in (output / PROGRESS).read_text().splitlines():
        word, number = line.split()
        if word == "start":
            runs.append([int(number)])
        elif runs:
            runs[-1].append(int(number))
    return runs


def _check_continuity(round_: Round, max_iter: int, period: int) -> None:
    """Every resume starts right after the checkpoint tagged at the kill, which is not older
    than the last completed save; iterations cover 0 .. max_iter - 1 without a gap."""
    runs, kills = _segments(round_.output), round_.kills
    crashed = [k["exit"] for k in kills if k["exit"] not in (0, -signal.SIGKILL)]
    if crashed or len(runs) != len(kills) + 1:
        round_.problems.append(f"runs crashed or never started: exits {[k['exit'] for k in kills]}"
                               f", {len(runs)} runs for {len(kills)} kills")
        return
    covered = set()
    for index, run in enumerate(runs):
        start, finished = run[0], run[1:]
        covered.update(finished)
        if finished != list(range(start, start + len(finished))):
            round_.problems.append(f"run {index} skipped iterations: {finished}")
        if index == 0:
            if start != 0:
                round_.problems.append(f"the first run started at {start}")
            continue
        tagged = kills[index - 1]["tagged"]
        covered.add(tagged)
        if start != tagged + 1:
            round_.problems.append(f"run {index} started at {start}, but the kill left "
                                   f"last_checkpoint at iteration {tagged}")
        saved = [i for i in runs[index - 1][1:] if (i + 1) % period == 0 or i == max_iter - 1]
        if saved and tagged < saved[-1]:
            round_.problems.append(f"run {index - 1} saved iteration {saved[-1]}, but resuming "
                                   f"used iteration {tagged}: progress lost")
    missing = sorted(set(range(max_iter)) - covered)
    if missing:
        round_.problems.append(f"iterations never run: {missing}")


@functools.lru_cache(maxsize=1)
def _model_for_checks():
    from retinanet_ext.engine import Trainer, load_config

    return Trainer.build_model(load_config(str(QUICK_CONFIG), tiny_training_opts("", 1, 1, 0)))


def _check_files(round_: Round, args: argparse.Namespace) -> None:
    """Every checkpoint loads with finite weights and its own iteration; no temp files."""
    from retinanet_ext.checkpoint import load_weights, nonfinite_weights

    model = _model_for_checks()
    checkpoints = sorted(p for p in round_.output.iterdir() if p.suffix == ".pth")
    for path in checkpoints:
        try:
            entries = load_weights(model, str(path))
        except Exception as error:
            round_.problems.append(f"{path.name} does not load: {error}")
            continue
        if entries.get("iteration") != _checkpoint_iteration(path.name, args.max_iter):
            round_.problems.append(f"{path.name} holds iteration {entries.get('iteration')}")
        if nonfinite_weights(model.state_dict()):
            round_.problems.append(f"{path.name} holds non-finite weights")
    leftovers = [p.name for p in round_.output.iterdir() if p.name.endswith(".tmp")]
    if leftovers:
        round_.problems.append(f"temporary files left: {leftovers}")
    periodic = [p for p in checkpoints if p.name != "model_final.pth"]
    if args.keep and len(periodic) > args.keep:
        round_.problems.append(f"{len(periodic)} periodic checkpoints kept, not <= {args.keep}")
    if "model_final.pth" not in {p.name for p in checkpoints}:
        round_.problems.append("no model_final.pth")


def run_round(output: Path, rng: random.Random, args: argparse.Namespace) -> Round:
    output.mkdir(parents=True, exist_ok=True)
    round_ = Round(output)
    log = open(output / "children.log", "ab")  # noqa: SIM115 (kept open across the runs)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        first_in_save = rng.random() < 0.5
        for index in range(args.kills):  # alternately inside a save and at a random moment
            runs_before = len(_starts(output))
            child = subprocess.Popen(_child_command(output, args), stdout=log, stderr=log,
                                     env=env, cwd=REPO_ROOT)
            during_save = (index % 2 == 0) == first_in_save
            round_.kills.append(_kill_once(child, output, runs_before, rng, args, during_save))
        final = subprocess.run(_child_command(output, args), stdout=log, stderr=log, env=env,
                               cwd=REPO_ROOT, timeout=1800)
    finally:
        log.close()
    if final.returncode != 0:
        round_.problems.append(f"the last run exited {final.returncode} (see children.log)")
        return round_
    _check_continuity(round_, args.max_iter, args.period)
    _check_files(round_, args)
    return round_


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--kills", type=int, default=4, help="SIGKILLs per round")
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--period", type=int, default=3, help="SOLVER.CHECKPOINT_PERIOD")
    parser.add_argument("--keep", type=int, default=3, help="CHECKPOINT_MAX_TO_KEEP")
    parser.add_argument("--save-seconds", type=float, default=1.0,
                        help="how long writing one checkpoint takes (slowed down)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="folder for the rounds (default: temp)")
    parser.add_argument("--data", default=None, help="synthetic data folder (default: OUTPUT)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        return run_child(args)
    root = Path(args.output or tempfile.mkdtemp(prefix="kill_soak_"))
    args.data = args.data or str(root / "data")
    prepare_data(args.data)
    rng = random.Random(args.seed)
    passed, started = 0, time.monotonic()
    for index in range(args.rounds):
        round_ = run_round(root / f"round_{index:02d}", rng, args)
        in_save = sum(k["in_save"] for k in round_.kills)
        status = "PASS" if not round_.problems else "FAIL: " + "; ".join(round_.problems)
        print(f"round {index}: {len(round_.kills)} kills ({in_save} during a save), "
              f"resumed at {_starts(round_.output)[1:]}: {status}", flush=True)
        passed += not round_.problems
    print(f"{passed}/{args.rounds} rounds passed in {time.monotonic() - started:.0f} s "
          f"(max_iter {args.max_iter}, period {args.period}, keep {args.keep}, "
          f"{args.kills} kills per round, seed {args.seed}); output in {root}", flush=True)
    return 0 if passed == args.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
