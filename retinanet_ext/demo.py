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

import retinanet_ext  # noqa: F401  (compatibility bridges before any detectron2 submodule)
from retinanet_ext.data import synthetic
from retinanet_ext.engine import Trainer, load_config

from detectron2.config import CfgNode  # noqa: I001  (after retinanet_ext on purpose)
from detectron2.engine import DefaultTrainer, hooks

__all__ = ["DEFAULT_CONFIG_FILE", "run_demo", "setup_demo_cfg"]

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
    """The demo's frozen config: retinanet_ext's defaults + ``DEMO.*`` + file + ``opts``."""
    cfg = load_config(config_file or DEFAULT_CONFIG_FILE, list(opts or []))
    cfg.OUTPUT_DIR = output_dir
    if not cfg.DEMO.DATA_DIR:
        cfg.DEMO.DATA_DIR = os.path.join(output_dir, "synthetic_data")
    cfg.freeze()
    return cfg


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


def _ap50_per_class(json_file: str, results_file: str) -> dict[str, float]:
    """AP at IoU 0.5 per class, from the evaluator's ``coco_instances_results.json``."""
    import contextlib
    import io

    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with open(results_file) as f:
        detections = json.load(f)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        if not detections:
            return {c["name"]: 0.0 for c in gt.dataset["categories"]}
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
    # precision: [T=iou thresholds, R, K=classes, A=area ranges, M=max dets]
    precision = ev.eval["precision"][0, :, :, 0, -1]
    cat_names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    out = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, k]
        p = p[p > -1]
        out[cat_names[cat_id]] = float(np.mean(p) * 100) if p.size else float("nan")
    return out


def _find_results_file(output_dir: str, dataset_name: str, since: float) -> str | None:
    """The ``coco_instances_results.json`` the evaluator wrote for ``dataset_name`` after
    ``since`` (a ``time.time()``), if any."""
    candidates = [
        os.path.join(output_dir, "inference", dataset_name, "coco_instances_results.json"),
        os.path.join(output_dir, "inference", "coco_instances_results.json"),
        os.path.join(output_dir, "coco_instances_results.json"),
    ]
    existing = [c for c in candidates if os.path.isfile(c) and os.path.getmtime(c) >= since - 1]
    return max(existing, key=os.path.getmtime) if existing else None


def _draw_predictions(cfg: CfgNode, model, dataset_name: str, out_dir: str) -> list[str]:
    """Run ``model`` on the first ``DEMO.NUM_VIS_IMAGES`` images of ``dataset_name`` and
    write them with the predicted boxes (score >= ``DEMO.VIS_SCORE_THRESH``)."""
    import cv2
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data import transforms as T
    from detectron2.utils.visualizer import Visualizer

    os.makedirs(out_dir, exist_ok=True)
    metadata = MetadataCatalog.get(dataset_name)
    dicts = DatasetCatalog.get(dataset_name)[: cfg.DEMO.NUM_VIS_IMAGES]
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    written = []
    was_training = model.training
    model.eval()
    try:
        for record in dicts:
            image = cv2.imread(record["file_name"], cv2.IMREAD_COLOR)  # BGR
            height, width = image.shape[:2]
            net_input = image if cfg.INPUT.FORMAT == "BGR" else image[:, :, ::-1]
            net_input = resize.get_transform(net_input).apply_image(net_input)
            tensor = torch.as_tensor(net_input.astype("float32").transpose(2, 0, 1))
            with torch.no_grad():
                instances = model([{"image": tensor, "height": height, "width": width}])[0][
                    "instances"
                ].to("cpu")
            instances = instances[instances.scores >= cfg.DEMO.VIS_SCORE_THRESH]
            scale = max(1.0, 512.0 / max(height, width))
            vis = Visualizer(image[:, :, ::-1], metadata=metadata, scale=scale)
            drawn = vis.draw_instance_predictions(instances).get_image()[:, :, ::-1]
            path = os.path.join(out_dir, os.path.splitext(os.path.basename(record["file_name"]))[0]
                                + ".png")
            cv2.imwrite(path, drawn)
            written.append(path)
    finally:
        model.train(was_training)
    return written


def _without_eval_hooks(trainer) -> None:
    """Drop evaluation hooks: the demo evaluates once, after training, and times it."""
    trainer._hooks = [h for h in trainer._hooks if not isinstance(h, hooks.EvalHook)]


def run_demo(
    output_dir: str,
    config_file: str | None = None,
    opts: list[str] | None = None,
    *,
    trainer_cls: type[DefaultTrainer] = Trainer,
) -> dict[str, Any]:
    """Generate the synthetic data, train RetinaNet from scratch, evaluate, draw.

    Args:
        output_dir: everything is written here (see the module docstring).
        config_file: defaults to ``configs/retinanet_demo_synthetic.yaml``.
        opts: config overrides, ``["KEY", "VALUE", ...]`` (``DEMO.*`` keys included).
        trainer_cls: a ``DefaultTrainer`` subclass (``build_evaluator`` must work).

    Returns:
        The metrics: ``{"bbox": {AP, AP50, ..., "AP-<class>"}, "ap50_per_class",
        "timings_s": {...}, "meta_architecture", "predictions": [paths], ...}``; also
        written to ``<output_dir>/demo_results.json`` (NaN written as null).
    """
    import torch
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    t_start = time.perf_counter()
    os.makedirs(output_dir, exist_ok=True)
    cfg = setup_demo_cfg(output_dir, config_file, opts)
    if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
        setup_logger(output_dir, distributed_rank=comm.get_rank(), name="detectron2")
    if not logging.getLogger("retinanet_ext").isEnabledFor(logging.INFO):
        setup_logger(output_dir, distributed_rank=comm.get_rank(), name="retinanet_ext")
    with open(os.path.join(output_dir, "config.yaml"), "w") as f:
        f.write(cfg.dump())

    # 1. data
    t0 = time.perf_counter()
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
    t_data = time.perf_counter() - t0
    logger.info(
        "Synthetic data %s in %.1fs at %s: %s",
        "reused" if data["reused"] else "generated", t_data, cfg.DEMO.DATA_DIR,
        json.dumps(data["class_counts"]),
    )
    for key, name in (("TRAIN", names["train"]), ("TEST", names["val"])):
        if name not in getattr(cfg.DATASETS, key):
            logger.warning("cfg.DATASETS.%s = %s does not use %s", key, getattr(cfg.DATASETS, key),
                           name)

    # 2. training
    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else None)
    t0 = time.perf_counter()
    trainer = trainer_cls(cfg)
    _without_eval_hooks(trainer)
    trainer.resume_or_load(resume=False)
    trainer.train()
    t_train = time.perf_counter() - t0
    model = trainer.model
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module

    # 3. evaluation
    t0, eval_started = time.perf_counter(), time.time()
    results = trainer_cls.test(cfg, model)
    t_eval = time.perf_counter() - t0
    bbox = dict(results.get("bbox", {})) if isinstance(results, dict) else {}
    ap50_per_class: dict[str, float] = {}
    results_file = _find_results_file(output_dir, names["val"], eval_started)
    if results_file:
        try:
            ap50_per_class = _ap50_per_class(data["splits"]["val"]["json_file"], results_file)
        except Exception as e:  # informative only
            logger.warning("per-class AP50 not computed: %s", e)

    # 4. pictures
    t0 = time.perf_counter()
    predictions = _draw_predictions(cfg, model, names["val"], os.path.join(output_dir,
                                                                           "predictions"))
    t_vis = time.perf_counter() - t0
    t_total = time.perf_counter() - t_start

    metrics: dict[str, Any] = OrderedDict(
        bbox=bbox,
        ap50_per_class=ap50_per_class,
        timings_s={"data": t_data, "train": t_train, "eval": t_eval, "visualize": t_vis,
                   "total": t_total},
        meta_architecture=cfg.MODEL.META_ARCHITECTURE,
        backbone=cfg.MODEL.BACKBONE.NAME,
        anchor_generator=cfg.MODEL.ANCHOR_GENERATOR.NAME,
        max_iter=cfg.SOLVER.MAX_ITER,
        ims_per_batch=cfg.SOLVER.IMS_PER_BATCH,
        dataset={"dir": cfg.DEMO.DATA_DIR, "reused": data["reused"],
                 "class_counts": data["class_counts"]},
        predictions=predictions,
        output_dir=output_dir,
    )
    if comm.is_main_process():
        with open(os.path.join(output_dir, "demo_results.json"), "w") as f:
            json.dump(_nan_to_none(metrics), f, indent=2)
        print(_format_table(bbox, ap50_per_class), flush=True)
        nan = float("nan")
        print(
            f"[retinanet_ext demo] {cfg.MODEL.META_ARCHITECTURE}: AP={bbox.get('AP', nan):.1f}"
            f" AP50={bbox.get('AP50', nan):.1f} | data {t_data:.0f}s, train {t_train:.0f}s"
            f" ({cfg.SOLVER.MAX_ITER} it), eval {t_eval:.0f}s, total {t_total:.0f}s"
            f" | outputs in {output_dir}",
            flush=True,
        )
    return metrics
