#!/usr/bin/env python
"""Train retinanet_ext's RetinaNet and Detectron2's built-in RetinaNet side by side on BCCD.

Both models start from the same random initialisation (Detectron2's model is built,
then loaded with ours' state dict: the keys are the same), see the same batches in
the same order (one data loader; each batch goes to both), with the same optimiser,
schedule and budget. Steps alternate between the two in one process, who goes first
swapping every iteration, so machine noise hits both alike. Then both are evaluated
with the COCO evaluator on BCCD val, image by image in alternation.

From random initialisation two such runs part ways after some tens of iterations
however close they start (benchmarks/training_drift.py), so one pair says little about
AP: ``--seeds`` trains one pair per seed (initialisation, data order, augmentation) and
reports each model's AP spread and the paired difference.

    ./run python benchmarks/bench_bccd.py --seeds 0 1 2 3 4 5 MODEL.FPN.OUT_CHANNELS 128
    ./run python benchmarks/bench_bccd.py --iters 100        # one shorter pair

Trailing KEY VALUE pairs override the config for both models. Writes
benchmarks/results/bccd_cpu.md (and .json; ``--output`` to change) with the machine and
versions, rewritten after every seed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import detectron2
import torch
from _machine import cpu_model, load_average  # benchmarks/ is on sys.path
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger

import retinanet_ext  # noqa: F401  (registers the components)
from retinanet_ext import compat
from retinanet_ext.config import use_detectron2_retinanet
from retinanet_ext.data import register_voc_dataset
from retinanet_ext.engine import load_config

REPO_ROOT = Path(__file__).resolve().parent.parent


def train_step(model, optimizer, scheduler, batch) -> tuple[float, float]:
    """One SGD step; returns (seconds, total loss)."""
    started = time.perf_counter()
    losses = model(batch)
    total = sum(losses.values())
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    scheduler.step()
    return time.perf_counter() - started, float(total)


def evaluate(models: dict, output_dir: Path) -> dict[str, tuple[dict, float]]:
    """COCO evaluation of every model on the test set, image by image in alternation.

    Returns, per model, the bbox metrics and the median seconds per image of the model
    call alone (the loader and the evaluator are shared costs, left out).
    """
    any_cfg = next(iter(models.values()))[1]
    dataset = any_cfg.DATASETS.TEST[0]
    evaluators = {
        name: COCOEvaluator(
            dataset,
            output_dir=str(output_dir / name),
            use_fast_impl=compat.has_compiled_extension(),
        )
        for name in models
    }
    seconds: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    for evaluator in evaluators.values():
        evaluator.reset()
    with torch.no_grad():
        for index, inputs in enumerate(build_detection_test_loader(any_cfg, dataset)):
            for name in order if index % 2 == 0 else order[::-1]:
                model, _ = models[name]
                started = time.perf_counter()
                outputs = model(inputs)
                seconds[name].append(time.perf_counter() - started)
                evaluators[name].process(inputs, outputs)
    return {
        name: (evaluators[name].evaluate()["bbox"], statistics.median(seconds[name]))
        for name in models
    }


def run_pair(base_cfg, seed: int) -> dict:
    """Train both models from one seed's initialisation on the same batches; evaluate both."""
    cfg = copy.deepcopy(base_cfg)
    cfg.SEED = seed
    theirs_cfg = use_detectron2_retinanet(copy.deepcopy(cfg))

    seed_all_rng(seed)  # initialisation, data order and augmentation
    ours = build_model(cfg)
    theirs = build_model(theirs_cfg)
    incompatible = theirs.load_state_dict(ours.state_dict(), strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    models = {"retinanet_ext": (ours, cfg), "detectron2": (theirs, theirs_cfg)}
    optim = {name: build_optimizer(c, m) for name, (m, c) in models.items()}
    sched = {name: build_lr_scheduler(c, optim[name]) for name, (m, c) in models.items()}
    for model, _ in models.values():
        model.train()

    loader = iter(build_detection_train_loader(cfg))
    storage = EventStorage(0)  # the models log training scalars into it, as under a trainer
    storage.__enter__()
    step_times: dict[str, list[float]] = {name: [] for name in models}
    losses: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    started = time.perf_counter()
    for iteration in range(cfg.SOLVER.MAX_ITER):
        batch = next(loader)
        for name in order if iteration % 2 == 0 else order[::-1]:
            model, _ = models[name]
            seconds, loss = train_step(model, optim[name], sched[name], batch)
            step_times[name].append(seconds)
            losses[name].append(loss)
        if (iteration + 1) % 20 == 0 or iteration + 1 == cfg.SOLVER.MAX_ITER:
            print(
                f"seed {seed} iter {iteration + 1}/{cfg.SOLVER.MAX_ITER}  "
                + "  ".join(
                    f"{n}: loss {losses[n][-1]:.3f} {step_times[n][-1]:.2f}s/it" for n in models
                )
                + f"  elapsed {time.perf_counter() - started:.0f}s",
                flush=True,
            )
    storage.__exit__(None, None, None)

    for model, _ in models.values():
        model.eval()
    eval_dir = Path(tempfile.mkdtemp(prefix="bench_bccd_eval_"))  # evaluator caches, not results
    evaluated = evaluate(models, eval_dir)
    rows = {}
    for name, (metrics, seconds_per_image) in evaluated.items():
        warm = step_times[name][5:] or step_times[name]
        rows[name] = {
            "AP": metrics["AP"],
            "AP50": metrics["AP50"],
            "train_s_per_iter_median": statistics.median(warm),
            "train_s_per_iter_mean": statistics.fmean(warm),
            "inference_s_per_image": seconds_per_image,
            "final_loss_mean_last20": statistics.fmean(losses[name][-20:]),
        }

    # Swap the trained weights and evaluate again: each model's code on the other's
    # weights. Equal APs with equal weights say the difference between the two rows
    # comes from the training trajectories, not from inference.
    trained = {name: copy.deepcopy(model.state_dict()) for name, (model, _) in models.items()}
    (a, (model_a, _)), (b, (model_b, _)) = models.items()
    model_a.load_state_dict(trained[b], strict=True)
    model_b.load_state_dict(trained[a], strict=True)
    swapped = evaluate(models, eval_dir / "swapped")
    rows[a]["AP_code_on_other_weights"] = swapped[a][0]["AP"]
    rows[b]["AP_code_on_other_weights"] = swapped[b][0]["AP"]
    return rows


def _mean_sd(values: list[float], digits: int = 2) -> str:
    if any(math.isnan(v) for v in values):  # COCO's AP is nan where a model found nothing
        return "nan"
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def summarise(runs: dict[int, dict]) -> tuple[dict, list[str]]:
    """Across seeds: each model's AP spread, the paired difference, the time ratios."""
    seeds = sorted(runs)
    summary: dict = {"seeds": seeds}
    lines = [
        "| seed | AP ours | AP Detectron2 | AP50 ours | AP50 Detectron2 | "
        "train s/iter ours | train s/iter Detectron2 | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for seed in seeds:
        o, t = runs[seed]["retinanet_ext"], runs[seed]["detectron2"]
        lines.append(
            f"| {seed} | {o['AP']:.2f} | {t['AP']:.2f} | {o['AP50']:.2f} | {t['AP50']:.2f} | "
            f"{o['train_s_per_iter_median']:.3f} | {t['train_s_per_iter_median']:.3f} | "
            f"{o['train_s_per_iter_median'] / t['train_s_per_iter_median']:.3f} |"
        )
    lines.append("")
    lines += [
        "| metric | retinanet_ext | Detectron2 | ours - Detectron2 (paired) |",
        "| --- | --- | --- | --- |",
    ]
    for key in ("AP", "AP50"):
        ours = [runs[s]["retinanet_ext"][key] for s in seeds]
        theirs = [runs[s]["detectron2"][key] for s in seeds]
        diffs = [a - b for a, b in zip(ours, theirs, strict=True)]
        summary[key] = {"retinanet_ext": ours, "detectron2": theirs, "difference": diffs}
        paired = _mean_sd(diffs)
        if len(diffs) >= 2 and not any(math.isnan(d) for d in diffs):
            stderr = statistics.stdev(diffs) / len(diffs) ** 0.5
            summary[key]["difference_mean"] = statistics.fmean(diffs)
            summary[key]["difference_stderr"] = stderr
            paired += f" (standard error {stderr:.2f})"
        lines.append(
            f"| {key} (mean ± sd over {len(seeds)} seeds) | {_mean_sd(ours)} | "
            f"{_mean_sd(theirs)} | {paired} |"
        )
    gaps = [
        abs(runs[s][code]["AP_code_on_other_weights"] - runs[s][other]["AP"])
        for s in seeds
        for code, other in (("retinanet_ext", "detectron2"), ("detectron2", "retinanet_ext"))
    ]
    summary["same_weights_AP_gap_max"] = max(gaps)
    lines.append(f"| same weights, the other model's code: largest AP gap | {max(gaps):.3f} | | |")
    for key in ("train_s_per_iter_median", "inference_s_per_image"):
        ratios = [runs[s]["retinanet_ext"][key] / runs[s]["detectron2"][key] for s in seeds]
        summary[key + "_ratio"] = ratios
        lines.append(f"| {key} ratio ours/Detectron2 | {_mean_sd(ratios, 3)} | | |")
    return summary, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config-file", default=str(REPO_ROOT / "configs" / "retinanet_R18_FPN_quick.yaml")
    )
    parser.add_argument("--iters", type=int, default=None, help="override SOLVER.MAX_ITER")
    parser.add_argument(
        "--datasets",
        default=os.environ.get(
            "RETINANET_EXT_DATASETS", str(REPO_ROOT.parent / "shared" / "datasets")
        ),
    )
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "bccd_cpu"))
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="one training pair per seed; several seeds measure the noise",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides, KEY VALUE pairs, applied to both models",
    )
    args = parser.parse_args()
    setup_logger(name="detectron2", abbrev_name="d2")
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    root = Path(args.datasets) / "bccd" / "BCCD"
    register_voc_dataset("bccd_train", str(root), "train")
    register_voc_dataset("bccd_val", str(root), "val")
    cfg = load_config(args.config_file, ["DATALOADER.NUM_WORKERS", "0", *args.opts])
    if args.iters is not None:
        scale = args.iters / cfg.SOLVER.MAX_ITER
        cfg.SOLVER.MAX_ITER = args.iters
        cfg.SOLVER.STEPS = tuple(int(s * scale) for s in cfg.SOLVER.STEPS)
        cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(1, args.iters // 6))

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[int, dict] = {}
    for seed in args.seeds:
        runs[seed] = run_pair(cfg, seed)
        # Written after every seed: an interrupted sweep keeps the pairs it finished.
        summary, table = summarise(runs)
        info = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{cpu_model()}, {os.cpu_count()} cores, "
            f"torch threads {torch.get_num_threads()}",
            "load_average_end": load_average(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "detectron2": detectron2.__version__,
            "detectron2_C": compat.has_compiled_extension(),
            "config": os.path.relpath(args.config_file, REPO_ROOT),
            "overrides": " ".join(args.opts) or "none",
            "iterations": cfg.SOLVER.MAX_ITER,
            "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
            "seeds finished": f"{len(runs)} of {len(args.seeds)}",
            "command": "benchmarks/bench_bccd.py " + " ".join(sys.argv[1:]),
        }
        output.with_suffix(".json").write_text(
            json.dumps(
                {"info": info, "runs": {str(k): v for k, v in runs.items()}, "summary": summary},
                indent=2,
            )
        )
        lines = [
            "# BCCD: retinanet_ext vs Detectron2's RetinaNet (CPU, same init, same batches)",
            "",
            *(f"- {k}: {v}" for k, v in info.items()),
            "",
            *table,
            "",
        ]
        output.with_suffix(".md").write_text("\n".join(lines))
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
