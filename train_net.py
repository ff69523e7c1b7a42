#!/usr/bin/env python
"""Train and evaluate retinanet_ext's RetinaNet with Detectron2's trainer and evaluator.

    python train_net.py --config-file configs/retinanet_R101_FPN.yaml
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS path/to/model_final.pth
    python train_net.py --config-file CONFIG --resume
    python train_net.py --config-file CONFIG --dataset mine_train=coco:ann.json:images \
        DATASETS.TRAIN "('mine_train',)" MODEL.RETINANET.NUM_CLASSES 3
    python train_net.py --config-file CONFIG --check-data
    python train_net.py --demo          # the built-in default: synthetic data, ~5 min on CPU

Flags are Detectron2's (``default_argument_parser``) plus ``--dataset``,
``--check-data``, ``--skip-bad-images`` and ``--demo``; trailing ``KEY VALUE`` pairs override
the config.
"""

from __future__ import annotations

import logging
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import retinanet_ext  # noqa: F401  (registers the components)
from retinanet_ext import compat
from retinanet_ext.analysis import resolve_anchors_from_data, warn_if_poor_anchor_coverage
from retinanet_ext.data import (
    DatasetError,
    check_data,
    check_num_classes,
    formats_help,
    register_dataset_spec,
    spec_grammar,
)
from retinanet_ext.engine import (
    CheckpointError,
    ConfigError,
    MissingDatasetError,
    Trainer,
    TrainingDivergedError,
    check_datasets_at_start,
    check_datasets_available,
    configure_cpu_threads,
    evaluate,
    load_config,
    load_weights,
    prepare_datasets,
    resolve_device,
)

logger = logging.getLogger("retinanet_ext")


def build_parser():
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME=FORMAT:PATH[:...]",
        help="register a dataset before training; repeatable; then name it in "
        f"DATASETS.TRAIN/TEST. Grammar: {spec_grammar()}. Formats: {formats_help()}.",
    )
    parser.add_argument(
        "--check-data",
        action="store_true",
        help="validate DATASETS.TRAIN and DATASETS.TEST, print a summary, do not train",
    )
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="drop images that cannot be decoded (or are over INPUT.MAX_IMAGE_PIXELS) with "
        "their annotations, listed in the summary and OUTPUT_DIR/dropped_images.txt, instead "
        "of stopping (sets DATALOADER.SKIP_BAD_IMAGES True)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="train and evaluate on the built-in synthetic dataset (the default main job)",
    )
    return parser


def register_datasets(specs: list[str]) -> list[str]:
    return [register_dataset_spec(spec) for spec in specs]


class UsageError(Exception):
    """Flags that cannot be used together."""


def check_flags(args) -> None:
    """Refuse flag combinations that cannot work, before anything runs or is written."""
    if args.demo:
        given = {
            "--dataset": bool(args.dataset),
            "--eval-only": args.eval_only,
            "--resume": args.resume,
            "--check-data": args.check_data,
            "--num-gpus": args.num_gpus != 1,
            "--num-machines": args.num_machines != 1,
            "--machine-rank": args.machine_rank != 0,
        }
        conflicting = [flag for flag, used in given.items() if used]
        if conflicting:
            raise UsageError(
                "--demo trains and evaluates the built-in demo end to end, on its own data in "
                f"one process; it cannot be combined with {', '.join(conflicting)}. Run "
                "train_net.py without --demo for your own data."
            )
    if args.check_data and (args.eval_only or args.resume):
        flag = "--eval-only" if args.eval_only else "--resume"
        raise UsageError(f"--check-data validates the datasets and trains nothing; drop {flag}.")


def setup(args) -> CfgNode:
    """Load and check the config; fail on a missing dataset before anything is written."""
    cfg = load_config(args.config_file, args.opts)
    resolve_device(cfg)
    datasets = list(cfg.DATASETS.TEST)
    if not args.eval_only or cfg.MODEL.RETINANET_EXT.ANCHORS_FROM_DATA:
        datasets = list(cfg.DATASETS.TRAIN) + datasets
    check_datasets_available(datasets)
    prepare_datasets(cfg, datasets)  # unusable images stop the run here, or are dropped
    try:
        check_num_classes(cfg, datasets)
        anchors = resolve_anchors_from_data(cfg)
    except DatasetError:
        raise
    except ValueError as error:  # NUM_CLASSES disagrees with the data, no training set
        raise ConfigError(str(error)) from error
    cfg.freeze()
    default_setup(cfg, args)
    configure_cpu_threads(cfg)
    # Dataset warnings (clipped or dropped boxes) go to the console and OUTPUT_DIR/log.txt.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="retinanet_ext")
    if anchors is not None:
        logger.info("Anchors from the training data (MODEL.RETINANET_EXT.ANCHORS_FROM_DATA): %s",
                    anchors.summary())
    if comm.is_main_process():  # background images per split, train/test leakage
        check_datasets_at_start(cfg, training=not args.eval_only)
    return cfg


def run_check_data(args) -> None:
    """``--check-data``: validate the datasets and print their summaries; write nothing."""
    register_datasets(args.dataset)
    cfg = load_config(args.config_file, args.opts)
    setup_logger(name="retinanet_ext")  # warnings to the console only
    check_data(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST), cfg=cfg)


def weights_to_evaluate(cfg: CfgNode, resume: bool) -> str:
    """``MODEL.WEIGHTS``, or with ``--resume`` OUTPUT_DIR's last checkpoint where there is one
    (as Detectron2's own train_net.py does)."""
    if resume:
        checkpointer = DetectionCheckpointer(torch.nn.Module(), cfg.OUTPUT_DIR)
        if checkpointer.has_checkpoint():
            return checkpointer.get_checkpoint_file()
        logger.info("--resume: no checkpoint in %s; evaluating MODEL.WEIGHTS", cfg.OUTPUT_DIR)
    return cfg.MODEL.WEIGHTS


def main(args) -> dict | None:
    register_datasets(args.dataset)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_weights(model, weights_to_evaluate(cfg, args.resume))
        return evaluate(cfg, model)
    if comm.is_main_process():  # names each class the anchors miss (analysis/anchors.py)
        warn_if_poor_anchor_coverage(cfg)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run_demo(args) -> None:
    from retinanet_ext.demo import run_demo as demo

    output_dir = "output/demo"
    opts = list(args.opts)
    if "OUTPUT_DIR" in opts[::2]:
        output_dir = opts[opts[::2].index("OUTPUT_DIR") * 2 + 1]
    demo(output_dir=output_dir, config_file=args.config_file or None, opts=opts)


def cli(argv: list[str] | None = None) -> int:
    # The Detectron2 bridges, for modules imported from here on (the venv's start-up hook
    # has installed them already; elsewhere this entry point does: docs/compat.md).
    compat.apply()
    args = build_parser().parse_args(argv)
    if args.skip_bad_images:
        args.opts = [*args.opts, "DATALOADER.SKIP_BAD_IMAGES", "True"]
    try:
        check_flags(args)
        if args.demo:
            run_demo(args)
            return 0
        if args.check_data:
            run_check_data(args)
            return 0
        compat.launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (UsageError, ConfigError, MissingDatasetError, CheckpointError, DatasetError,
            TrainingDivergedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
