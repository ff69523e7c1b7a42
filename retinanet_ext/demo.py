"""End-to-end demo: synthetic data -> RetinaNet from scratch -> COCO evaluation -> pictures.

``python train_net.py --demo`` calls :func:`run_demo`. On 2 CPU cores the whole run
(data generation, training, evaluation) takes a few minutes; everything it needs comes
from ``configs/retinanet_demo_synthetic.yaml`` (model, solver, input sizes and, under
``DEMO.*``, the synthetic data set's parameters), overridable with ``opts``.

Outputs, under ``output_dir``::

    synthetic_data/           the generated data set (reused when the parameters match)
    predictions/*.png         a few held-out images with the predicted boxes drawn
    demo_results.json         COCO metrics, per-class AP50, timings, what was run
    config.yaml               the full config used
    model_final.pth, metrics.json, log.txt, inference/<dataset>/  (Detectron2's)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import OrderedDict
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.engine import hooks

import retinanet_ext  # noqa: F401  (registers the components)
from retinanet_ext.data import synthetic
from retinanet_ext.engine import Trainer, configure_cpu_threads, load_config

__all__ = ["DEFAULT_CONFIG_FILE", "DemoTrainer", "prepare_data", "run_demo", "setup_demo_cfg"]

logger = logging.getLogger("retinanet_ext.demo")

#: ``configs/retinanet_demo_synthetic.yaml`` of the repository.
DEFAULT_CONFIG_FILE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs",
    "retinanet_demo_synthetic.yaml",
)


def setup_demo_cfg(
    output_dir: str, config_file: str | None = None, opts: list[str] | None = None
) -> CfgNode:
    """The demo's frozen config: retinanet_ext's defaults (``DEMO.*`` included, see
    :mod:`retinanet_ext.config`) + file + ``opts``."""
    cfg = load_config(config_file or DEFAULT_CONFIG_FILE, list(opts or []))
    cfg.OUTPUT_DIR = output_dir
    if not cfg.DEMO.DATA_DIR:
        cfg.DEMO.DATA_DIR = os.path.join(output_dir, "synthetic_data")
    cfg.freeze()
    return cfg


class DemoTrainer(Trainer):
    """The project's trainer without the evaluation hook: the demo evaluates once, after
    training, and times it on its own."""

    def build_hooks(self) -> list:
        return [hook for hook in super().build_hooks() if not isinstance(hook, hooks.EvalHook)]


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    return value


def _format_table(bbox: dict[str, float], ap50_per_class: dict[str, float]) -> str:
    def fmt(v: float | None) -> str:
        return "  nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.2f}"

    main = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    lines = [
        "COCO bbox results on the held-out split:",
        "  " + " | ".join(f"{k:>6}" for k in main),
        "  " + " | ".join(fmt(bbox.get(k)) for k in main),
        "  per class:   class      AP   AP50",
    ]
    for name in synthetic.CLASS_NAMES:
        lines.append(
            f"  {name:>18} {fmt(bbox.get('AP-' + name))} {fmt(ap50_per_class.get(name))}"
        )
    return "\n".join(lines)


def _draw_predictions(cfg: CfgNode, model, dataset_name: str, out_dir: str) -> list[str]:
    """Predict the first ``DEMO.NUM_VIS_IMAGES`` images of ``dataset_name`` with
    ``retinanet_ext.Predictor`` (scores above ``DEMO.VIS_SCORE_THRESH``) and draw them with
    :func:`retinanet_ext.visualization.draw_boxes`: what ``retinanet-ext predict`` does."""
    from detectron2.data import DatasetCatalog
    from PIL import Image

    from retinanet_ext.predictor import Predictor
    from retinanet_ext.visualization import draw_boxes

    os.makedirs(out_dir, exist_ok=True)
    files = [r["file_name"] for r in DatasetCatalog.get(dataset_name)[: cfg.DEMO.NUM_VIS_IMAGES]]
    was_training = model.training
    predictor = Predictor.from_model(model, cfg, synthetic.CLASS_NAMES,
                                     score_thresh=cfg.DEMO.VIS_SCORE_THRESH)
    written = []
    try:
        for file_name, found in zip(files, predictor(files), strict=True):
            image_rgb, _ = Predictor.load(file_name)
            drawn = draw_boxes(image_rgb, found.boxes, found.class_ids, predictor.class_names,
                               found.scores)
            path = os.path.join(out_dir, os.path.splitext(os.path.basename(file_name))[0] + ".png")
            Image.fromarray(drawn).save(path)
            written.append(path)
    finally:
        model.train(was_training)
    return written


def _setup_logging(output_dir: str) -> None:
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    for name in ("detectron2", "retinanet_ext"):
        if not logging.getLogger(name).isEnabledFor(logging.INFO):
            setup_logger(output_dir, distributed_rank=comm.get_rank(), name=name)


def prepare_data(cfg: CfgNode) -> tuple[dict[str, Any], dict[str, str]]:
    """Generate (or reuse) the synthetic data set and register its splits."""
    data = synthetic.generate_synthetic_dataset(
        cfg.DEMO.DATA_DIR,
        num_train=cfg.DEMO.NUM_TRAIN,
        num_val=cfg.DEMO.NUM_VAL,
        image_size=cfg.DEMO.IMAGE_SIZE,
        seed=cfg.DEMO.DATA_SEED,
        objects_per_image=tuple(cfg.DEMO.OBJECTS_PER_IMAGE),
        object_size=tuple(cfg.DEMO.OBJECT_SIZE),
        class_frequencies=cfg.DEMO.CLASS_FREQUENCIES,
        clutter=cfg.DEMO.CLUTTER,
        noise=cfg.DEMO.NOISE,
        class_colour_prob=cfg.DEMO.CLASS_COLOUR_PROB,
    )
    names = synthetic.register_synthetic_dataset(cfg.DEMO.DATA_DIR)
    for key, name in (("TRAIN", names["train"]), ("TEST", names["val"])):
        if name not in getattr(cfg.DATASETS, key):
            logger.warning("cfg.DATASETS.%s = %s does not use %s", key, getattr(cfg.DATASETS, key),
                           name)
    return data, names


def _train(cfg: CfgNode) -> torch.nn.Module:
    """Train from scratch (seeded by ``SEED``); returns the trained model, unwrapped."""
    from detectron2.utils.env import seed_all_rng

    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else None)
    trainer = DemoTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return model


def _evaluate(cfg: CfgNode, model: torch.nn.Module) -> tuple[dict[str, float], dict[str, float]]:
    """COCO metrics on the held-out split, and AP50 per class (the evaluator's AP50-<class>)."""
    results = DemoTrainer.test(cfg, model)
    bbox = dict(results.get("bbox", {})) if isinstance(results, dict) else {}
    ap50_per_class = {
        name: bbox[f"AP50-{name}"] for name in synthetic.CLASS_NAMES if f"AP50-{name}" in bbox
    }
    return bbox, ap50_per_class


def _network_precision(model: torch.nn.Module) -> str:
    """The dtype the trained model's backbone and head ran in (MODEL.RETINANET_EXT.PRECISION
    as resolved on this machine; float32 for a model without that key, e.g. Detectron2's)."""
    return str(getattr(model, "network_dtype", torch.float32)).replace("torch.", "")


def _report(cfg: CfgNode, metrics: dict[str, Any]) -> None:
    """Write ``demo_results.json`` and print the table and the one-line summary."""
    from detectron2.utils import comm

    if not comm.is_main_process():
        return
    with open(os.path.join(cfg.OUTPUT_DIR, "demo_results.json"), "w") as f:
        json.dump(_nan_to_none(metrics), f, indent=2)
    bbox, timings = metrics["bbox"], metrics["timings_s"]
    print(_format_table(bbox, metrics["ap50_per_class"]), flush=True)
    nan = float("nan")
    print(
        f"[retinanet_ext demo] {cfg.MODEL.META_ARCHITECTURE}: AP={bbox.get('AP', nan):.1f}"
        f" AP50={bbox.get('AP50', nan):.1f} | {metrics['precision']} | data"
        f" {timings['data']:.0f}s, train"
        f" {timings['train']:.0f}s ({cfg.SOLVER.MAX_ITER} it), eval {timings['eval']:.0f}s,"
        f" total {timings['total']:.0f}s | outputs in {cfg.OUTPUT_DIR}",
        flush=True,
    )


def run_demo(
    output_dir: str, config_file: str | None = None, opts: list[str] | None = None
) -> dict[str, Any]:
    """Generate the synthetic data, train RetinaNet from scratch, evaluate, draw.

    Args:
        output_dir: everything is written here (see the module docstring).
        config_file: defaults to ``configs/retinanet_demo_synthetic.yaml``.
        opts: config overrides, ``["KEY", "VALUE", ...]`` (``DEMO.*`` keys included).

    Returns:
        The metrics: ``{"bbox": {AP, AP50, ..., "AP-<class>"}, "ap50_per_class",
        "timings_s": {...}, "meta_architecture", "predictions": [paths], ...}``; also
        written to ``<output_dir>/demo_results.json`` (NaN written as null).
    """
    t_start = time.perf_counter()
    os.makedirs(output_dir, exist_ok=True)
    cfg = setup_demo_cfg(output_dir, config_file, opts)
    _setup_logging(output_dir)
    configure_cpu_threads(cfg)
    with open(os.path.join(output_dir, "config.yaml"), "w") as f:
        f.write(cfg.dump())

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data, names = prepare_data(cfg)
    timings["data"] = time.perf_counter() - t0
    logger.info("Synthetic data %s in %.1fs at %s: %s", "reused" if data["reused"] else
                "generated", timings["data"], cfg.DEMO.DATA_DIR, json.dumps(data["class_counts"]))
    t0 = time.perf_counter()
    model = _train(cfg)
    timings["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    bbox, ap50_per_class = _evaluate(cfg, model)
    timings["eval"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    predictions = _draw_predictions(cfg, model, names["val"],
                                    os.path.join(output_dir, "predictions"))
    timings["visualize"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    metrics: dict[str, Any] = OrderedDict(
        bbox=bbox,
        ap50_per_class=ap50_per_class,
        timings_s=timings,
        meta_architecture=cfg.MODEL.META_ARCHITECTURE,
        precision=_network_precision(model),
        backbone=cfg.MODEL.BACKBONE.NAME,
        anchor_generator=cfg.MODEL.ANCHOR_GENERATOR.NAME,
        max_iter=cfg.SOLVER.MAX_ITER,
        ims_per_batch=cfg.SOLVER.IMS_PER_BATCH,
        dataset={"dir": cfg.DEMO.DATA_DIR, "reused": data["reused"],
                 "class_counts": data["class_counts"]},
        predictions=predictions,
        output_dir=output_dir,
    )
    _report(cfg, metrics)
    return metrics
