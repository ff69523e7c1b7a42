"""The small-data recipe against Detectron2's RetinaNet at the same wall-clock training budget,
on BCCD (train -> val), several seeds each.

Arms:

* ``recipe``: ``configs/recipes/small_data_R18_FPN.yaml``.
* ``baseline``: Detectron2's RetinaNet (its meta-architecture, backbone and anchor generator)
  with Detectron2's ``retinanet_R_50_FPN_1x`` settings (``configs/retinanet_R50_FPN_1x.yaml``,
  the model zoo's file in safe YAML: R50-FPN, batch 16, LR 0.01) changed only as needed to
  train from scratch (no weights, trainable BatchNorm, nothing frozen, Detectron2's gradient
  clipping switched on: without it the first run diverged) and to fit the budget (the quick
  config's input size; as many iterations as fit).

Budget: each arm first runs a few iterations to measure its seconds per iteration on this
machine (``--calibrate-iters``, after Detectron2's 3-iteration warm-up; kept in
``calibration.json``), then trains ``floor(budget / s_per_iter)`` iterations with its learning-rate
schedule (``SOLVER.STEPS``, ``SOLVER.WARMUP_ITERS``) scaled by the same factor as its
``SOLVER.MAX_ITER``, the warm-up at least an eighth of the run (the recipe's own fraction;
Detectron2's 1000 of 90000 iterations scaled to under a hundred would be 1). The training
time each run really took (Detectron2's total minus hooks) is in the table beside the budget.
The runs are ``retinanet-ext sweep`` runs (one folder per arm under ``--output``): resumable,
finished runs are kept and not redone.

    ./run python benchmarks/bench_recipe.py                        # 20 min x 3 seeds x 2 arms
    ./run python benchmarks/bench_recipe.py --seeds 0 1 2 3 --budget-min 20
    ./run python benchmarks/bench_recipe.py --arms baseline    # one arm now, the other later

Trailing ``KEY VALUE`` pairs override both arms' configs (the smoke test uses them to shrink
everything). Writes ``--output``/results.md and results.json: per arm AP, AP50, AP75 and
per-class AP as mean +- sd over seeds, the paired difference recipe - baseline per seed, and
the issue's acceptance checks with their numbers.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from _machine import cpu_model, load_average, results_header  # noqa: E402  (benchmarks/ is on sys.path)

import retinanet_ext  # noqa: E402,F401  (registers the components)

RECIPE_CONFIG = REPO_ROOT / "configs" / "recipes" / "small_data_R18_FPN.yaml"
#: Detectron2's COCO-Detection/retinanet_R_50_FPN_1x.yaml in safe YAML (the zoo's file
#: computes its anchor sizes with a !!python tag, which safe loading refuses).
BASELINE_CONFIG = REPO_ROOT / "configs" / "retinanet_R50_FPN_1x.yaml"
#: Detectron2's RetinaNet from scratch on BCCD at the quick config's input size.
BASELINE_OPTS = [
    "MODEL.META_ARCHITECTURE", "RetinaNet",
    "MODEL.BACKBONE.NAME", "build_retinanet_resnet_fpn_backbone",
    "MODEL.ANCHOR_GENERATOR.NAME", "DefaultAnchorGenerator",  # Detectron2's three components
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0",  # trainable norms
    "MODEL.RETINANET.NUM_CLASSES", "3",
    "INPUT.MIN_SIZE_TRAIN", "(320,)", "INPUT.MAX_SIZE_TRAIN", "448",
    "INPUT.MIN_SIZE_TEST", "320", "INPUT.MAX_SIZE_TEST", "448",
    "DATASETS.TRAIN", "('bccd_train',)", "DATASETS.TEST", "('bccd_val',)",
    "DATALOADER.NUM_WORKERS", "2",
    # Detectron2's gradient clipping (its default type and value), off by default: without it
    # the seed-0 run diverged to NaN (recipe_bccd/diverged/).
    "SOLVER.CLIP_GRADIENTS.ENABLED", "True",
]
#: Each arm warms its learning rate up over at least this fraction of its iterations (the
#: recipe's own 50 of 400): Detectron2's 1000 of 90000, scaled to a budget of under a hundred
#: iterations, would be 1.
MIN_WARMUP_FRACTION = 1 / 8
ARMS = ("recipe", "baseline")
_SPEED = re.compile(r"Overall training speed: (\d+) iterations in \S+ \(([\d.]+) s / it\)")


def dataset_specs(datasets_root: Path) -> list[str]:
    bccd = datasets_root / "bccd" / "BCCD"
    if not (bccd / "Annotations").is_dir():
        raise SystemExit(f"error: BCCD not found at {bccd} (--datasets-root)")
    return [f"bccd_train=voc:{bccd}:train", f"bccd_val=voc:{bccd}:val"]


def arm_config(arm: str) -> tuple[str, list[str]]:
    """(config file, overrides) of an arm, before the budget's schedule."""
    if arm == "recipe":
        return str(RECIPE_CONFIG), []
    return str(BASELINE_CONFIG), list(BASELINE_OPTS)


def schedule(config_file: str, opts: list[str], max_iter: int) -> list[str]:
    """SOLVER.MAX_ITER, STEPS and WARMUP_ITERS for ``max_iter`` iterations: the config's schedule
    scaled by max_iter / its MAX_ITER, the warm-up at least ``MIN_WARMUP_FRACTION`` of it."""
    from retinanet_ext.engine import load_config

    cfg = load_config(config_file, opts)
    scale = max_iter / cfg.SOLVER.MAX_ITER
    # A step that lands on or past the last iteration is dropped, and on a tiny budget the
    # last ones until fvcore's schedule fits (it needs more iterations than schedule values).
    steps = sorted({round(s * scale) for s in cfg.SOLVER.STEPS} & set(range(1, max_iter)))
    while steps and len(steps) + 1 >= max_iter:
        steps.pop()
    steps = tuple(steps)
    warmup = round(max(cfg.SOLVER.WARMUP_ITERS * scale, max_iter * MIN_WARMUP_FRACTION))
    warmup = min(max_iter, max(1, warmup))
    return ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", str(steps),
            "SOLVER.WARMUP_ITERS", str(warmup), "SOLVER.CHECKPOINT_PERIOD", str(max_iter)]


def calibrate(arm: str, output: Path, specs: list[str], opts: list[str], iters: int) -> dict:
    """Seconds per iteration of ``arm`` on this machine (cached in calibration.json)."""
    path = output / "calibration.json"
    cache = json.loads(path.read_text()) if path.is_file() else {}
    if arm in cache:
        return cache[arm]
    config_file, arm_opts = arm_config(arm)
    run_dir = output / "calibration" / arm
    command = [sys.executable, str(REPO_ROOT / "train_net.py"), "--config-file", config_file]
    for spec in specs:
        command += ["--dataset", spec]
    command += [*arm_opts, *opts, "SOLVER.MAX_ITER", str(iters + 3), "SOLVER.STEPS", "()",
                "DATASETS.TEST", "()", "OUTPUT_DIR", str(run_dir)]
    print(f"[{arm}] calibrating: {iters} iterations after 3 of warm-up", flush=True)
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    found = _SPEED.findall(result.stdout + result.stderr)
    if result.returncode != 0 or not found:
        raise SystemExit(f"error: calibration of {arm} failed (exit {result.returncode}):\n"
                         + (result.stdout + result.stderr)[-3000:])
    cache[arm] = {"s_per_iter": float(found[-1][1]), "iterations_timed": int(found[-1][0])}
    output.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cache, indent=1))
    return cache[arm]


def run_arm(arm: str, output: Path, specs: list[str], opts: list[str], seeds: list[int],
            max_iter: int) -> list[dict]:
    """Train and evaluate ``arm`` once per seed through ``retinanet-ext sweep``; its rows."""
    config_file, arm_opts = arm_config(arm)
    arm_opts = [*arm_opts, *opts]
    command = [sys.executable, "-m", "retinanet_ext", "sweep", "--config-file", config_file,
               "--output", str(output / arm), "--seeds", *map(str, seeds)]
    for spec in specs:
        command += ["--dataset", spec]
    command += [*arm_opts, *schedule(config_file, arm_opts, max_iter)]
    print(f"[{arm}] {max_iter} iterations per run: {' '.join(command)}", flush=True)
    result = subprocess.run(command, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise SystemExit(f"error: the {arm} runs failed (exit {result.returncode}); "
                         f"logs under {output / arm / 'runs'}")
    return finished_rows(output, arm, seeds)


def finished_rows(output: Path, arm: str, seeds: list[int]) -> list[dict]:
    """The finished runs of ``arm`` for ``seeds``, from its sweep's results.csv."""
    path = output / arm / "results.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [row for row in csv.DictReader(f)
                if row.get("status") == "done" and int(row["seed"]) in seeds]
    return sorted(rows, key=lambda row: int(row["seed"]))


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: dict[str, list[dict]], budget_s: float, calibration: dict,
              max_iters: dict) -> dict:
    classes = [k for k in rows["recipe"][0] if k.startswith("AP-")]
    arms = {}
    for arm, arm_rows in rows.items():
        metrics = {key: [float(r[key]) for r in arm_rows]
                   for key in ["AP", "AP50", "AP75", *classes]}
        arms[arm] = {"seeds": [int(r["seed"]) for r in arm_rows], "metrics": metrics,
                     "train_s": [float(r["train_s"]) for r in arm_rows],
                     "max_iter": max_iters[arm], "calibration": calibration[arm]}
    paired_seeds = sorted(set(arms["recipe"]["seeds"]) & set(arms["baseline"]["seeds"]))
    by_seed = {arm: dict(zip(arms[arm]["seeds"], arms[arm]["metrics"]["AP"], strict=True))
               for arm in ARMS}
    diffs = [by_seed["recipe"][s] - by_seed["baseline"][s] for s in paired_seeds]
    recipe_ap = statistics.mean(arms["recipe"]["metrics"]["AP"])
    baseline_ap = statistics.mean(arms["baseline"]["metrics"]["AP"])
    lowest_class = min(min(arms["recipe"]["metrics"][c]) for c in classes)
    checks = {
        "recipe mean AP >= 48": (recipe_ap >= 48, f"{recipe_ap:.1f}"),
        "recipe mean AP >= 2x baseline": (recipe_ap >= 2 * baseline_ap,
                                          f"{recipe_ap:.1f} vs 2 x {baseline_ap:.1f}"),
        "every class AP >= 30, every recipe seed": (lowest_class >= 30,
                                                    f"lowest {lowest_class:.1f}"),
        "at least 3 seeds per arm": (min(len(arms[a]["seeds"]) for a in ARMS) >= 3,
                                     ", ".join(f"{a} {len(arms[a]['seeds'])}" for a in ARMS)),
    }
    return {"budget_s": budget_s, "classes": classes, "arms": arms,
            "paired": {"seeds": paired_seeds, "AP_differences": diffs},
            "checks": {k: {"pass": bool(v[0]), "value": v[1]} for k, v in checks.items()}}


def write_results(output: Path, summary: dict, info: dict, argv: str) -> None:
    lines = [*results_header("Small-data recipe vs Detectron2's RetinaNet, same training budget, "
                             "BCCD", f"./run python benchmarks/bench_recipe.py {argv}", info),
             f"Budget per run: {summary['budget_s'] / 60:.1f} min of training (each arm's "
             "iterations from its measured seconds per iteration).", "",
             "| metric | " + " | ".join(ARMS) + " |", "| --- | --- | --- |"]
    for key in ["AP", "AP50", "AP75", *summary["classes"]]:
        cells = ["{:.1f} ± {:.1f}".format(*mean_sd(summary["arms"][a]["metrics"][key]))
                 for a in ARMS]
        lines.append(f"| {key} (mean ± sd) | " + " | ".join(cells) + " |")
    for label, cell in (
        ("seeds", lambda a: ", ".join(map(str, summary["arms"][a]["seeds"]))),
        ("AP per seed", lambda a: ", ".join(f"{v:.1f}" for v in
                                            summary["arms"][a]["metrics"]["AP"])),
        ("iterations per run", lambda a: str(summary["arms"][a]["max_iter"])),
        ("calibrated s/iter", lambda a: f"{summary['arms'][a]['calibration']['s_per_iter']:.2f}"),
        ("training time per run (min)", lambda a: ", ".join(
            f"{s / 60:.1f}" for s in summary["arms"][a]["train_s"])),
    ):
        lines.append(f"| {label} | " + " | ".join(cell(a) for a in ARMS) + " |")
    diffs = summary["paired"]["AP_differences"]
    if diffs:
        mean, sd = mean_sd(diffs)
        stderr = sd / math.sqrt(len(diffs))
        lines += ["", f"Paired AP difference recipe - baseline over seeds "
                  f"{summary['paired']['seeds']}: {mean:+.1f} ± {sd:.1f} (standard error "
                  f"{stderr:.1f}); per seed {', '.join(f'{d:+.1f}' for d in diffs)}."]
    lines += ["", "| acceptance check | result | value |", "| --- | --- | --- |"]
    for name, check in summary["checks"].items():
        lines.append(f"| {name} | {'pass' if check['pass'] else 'FAIL'} | {check['value']} |")
    (output / "results.md").write_text("\n".join(lines) + "\n")
    (output / "results.json").write_text(json.dumps({"info": info, **summary}, indent=1))
    print(f"wrote {output / 'results.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-min", type=float, default=20.0,
                        help="minutes of training per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--calibrate-iters", type=int, default=10)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                        help="the arms to train in this invocation (default: both); the "
                        "table is written once every arm has finished runs")
    parser.add_argument("--datasets-root", default=os.environ.get(
        "RETINANET_EXT_DATASETS", str(REPO_ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks/results/recipe_bccd"))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, both arms")
    args = parser.parse_args()
    output = Path(args.output)
    specs = dataset_specs(Path(args.datasets_root))
    budget_s = args.budget_min * 60
    calibration, max_iters, rows = {}, {}, {}
    for arm in ARMS:  # both calibrated first: the two measurements close together in time
        calibration[arm] = calibrate(arm, output, specs, args.opts, args.calibrate_iters)
        max_iters[arm] = max(2, math.floor(budget_s / calibration[arm]["s_per_iter"]))
    for arm in ARMS:
        if arm in args.arms:
            rows[arm] = run_arm(arm, output, specs, args.opts, args.seeds, max_iters[arm])
            if not rows[arm]:
                raise SystemExit(f"error: no finished {arm} run in {output / arm}")
        else:
            rows[arm] = finished_rows(output, arm, args.seeds)
    waiting = [arm for arm in ARMS if not rows[arm]]
    if waiting:
        print(f"no table yet: no finished {' or '.join(waiting)} run under {output} "
              f"(--arms {' '.join(waiting)} trains them)")
        return

    import detectron2
    import torch

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": f"{cpu_model()} ({os.cpu_count()} logical CPUs)",
        "python": platform.python_version(), "torch": torch.__version__,
        "detectron2": detectron2.__version__, "load_average_end": load_average(),
        "recipe": str(RECIPE_CONFIG.relative_to(REPO_ROOT)),
        "baseline": f"{BASELINE_CONFIG.relative_to(REPO_ROOT)} + {' '.join(BASELINE_OPTS)}",
    }
    write_results(output, summarise(rows, budget_s, calibration, max_iters), info,
                  " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
