#!/usr/bin/env python
"""Train retinanet_ext's RetinaNet and Detectron2's built-in RetinaNet side by side on BCCD.

Both models start from the same random initialisation (Detectron2's model is built,
then loaded with ours' state dict: the keys are the same), see the same batches in
the same order (one data loader; each batch goes to both), with the same optimiser,
schedule and budget. Steps alternate between the two in one process, who goes first
swapping every iteration, so machine noise hits both alike. Then each is evaluated
with the COCO evaluator on BCCD val.

    .venv/bin/python benchmarks/bench_bccd.py                 # config's budget (300 iterations)
    .venv/bin/python benchmarks/bench_bccd.py --iters 100     # shorter

Writes benchmarks/results/bccd_cpu.md (and .json) with the machine and versions.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import retinanet_ext  # noqa: F401  (bridges, registrations)
from retinanet_ext import compat
from retinanet_ext.data import register_voc_dataset
from retinanet_ext.engine import load_config

import detectron2
import torch
from _machine import cpu_model, load_average  # benchmarks/ is on sys.path
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger

REPO_ROOT = Path(__file__).resolve().parent.parent
DETECTRON2_COMPONENTS = [
    "MODEL.META_ARCHITECTURE", "RetinaNet",
    "MODEL.BACKBONE.NAME", "build_retinanet_resnet_fpn_backbone",
    "MODEL.ANCHOR_GENERATOR.NAME", "DefaultAnchorGenerator",
]


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


def evaluate(cfg, model, name: str, output_dir: Path) -> tuple[dict, float]:
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    evaluator = COCOEvaluator(cfg.DATASETS.TEST[0], output_dir=str(output_dir / name),
                              use_fast_impl=compat.has_compiled_extension())
    started = time.perf_counter()
    results = inference_on_dataset(model, loader, evaluator)
    return results["bbox"], (time.perf_counter() - started) / len(loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file",
                        default=str(REPO_ROOT / "configs" / "retinanet_R18_FPN_quick.yaml"))
    parser.add_argument("--iters", type=int, default=None, help="override SOLVER.MAX_ITER")
    parser.add_argument("--datasets", default=os.environ.get(
        "RETINANET_EXT_DATASETS", str(REPO_ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "bccd_cpu"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    setup_logger(name="detectron2", abbrev_name="d2")
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    root = Path(args.datasets) / "bccd" / "BCCD"
    register_voc_dataset("bccd_train", str(root), "train")
    register_voc_dataset("bccd_val", str(root), "val")
    cfg = load_config(args.config_file, ["DATALOADER.NUM_WORKERS", "0"])
    if args.iters is not None:
        scale = args.iters / cfg.SOLVER.MAX_ITER
        cfg.SOLVER.MAX_ITER = args.iters
        cfg.SOLVER.STEPS = tuple(int(s * scale) for s in cfg.SOLVER.STEPS)
        cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(1, args.iters // 6))
    cfg.SEED = args.seed
    theirs_cfg = copy.deepcopy(cfg)
    theirs_cfg.merge_from_list(DETECTRON2_COMPONENTS)

    torch.manual_seed(args.seed)
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
            print(f"iter {iteration + 1}/{cfg.SOLVER.MAX_ITER}  "
                  + "  ".join(f"{n}: loss {losses[n][-1]:.3f} {step_times[n][-1]:.2f}s/it"
                              for n in models)
                  + f"  elapsed {time.perf_counter() - started:.0f}s", flush=True)

    storage.__exit__(None, None, None)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = {}
    eval_dir = Path(tempfile.mkdtemp(prefix="bench_bccd_eval_"))  # evaluator caches, not results
    for name, (model, model_cfg) in models.items():
        model.eval()
        with torch.no_grad():
            metrics, seconds_per_image = evaluate(model_cfg, model, name, eval_dir)
        warm = step_times[name][5:] or step_times[name]
        rows[name] = {
            "AP": metrics["AP"], "AP50": metrics["AP50"],
            "train_s_per_iter_median": statistics.median(warm),
            "train_s_per_iter_mean": statistics.fmean(warm),
            "inference_s_per_image": seconds_per_image,
            "final_loss_mean_last20": statistics.fmean(losses[name][-20:]),
        }
    ratio = {
        key: rows["retinanet_ext"][key] / rows["detectron2"][key]
        for key in ("train_s_per_iter_median", "inference_s_per_image")
    }
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, "
                   f"torch threads {torch.get_num_threads()}",
        "load_average_end": load_average(),
        "python": platform.python_version(), "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "detectron2_C": compat.has_compiled_extension(),
        "config": os.path.relpath(args.config_file, REPO_ROOT),
        "iterations": cfg.SOLVER.MAX_ITER, "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "command": "benchmarks/bench_bccd.py " + " ".join(sys.argv[1:]),
    }
    output.with_suffix(".json").write_text(json.dumps({"info": info, "results": rows,
                                                       "ratio_ours_over_theirs": ratio}, indent=2))
    lines = [
        "# BCCD: retinanet_ext vs Detectron2's RetinaNet (CPU, same init, same batches)", "",
        *(f"- {k}: {v}" for k, v in info.items()), "",
        "| model | AP | AP50 | train s/iter (median) | inference s/image | loss (last 20) |",
        "| --- | --- | --- | --- | --- | --- |",
        *(f"| {n} | {r['AP']:.2f} | {r['AP50']:.2f} | {r['train_s_per_iter_median']:.3f} | "
          f"{r['inference_s_per_image']:.3f} | {r['final_loss_mean_last20']:.3f} |"
          for n, r in rows.items()),
        f"| ratio ours/theirs | | | {ratio['train_s_per_iter_median']:.3f} | "
        f"{ratio['inference_s_per_image']:.3f} | |", "",
    ]
    output.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
