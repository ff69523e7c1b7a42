"""``retinanet-ext plot-focal``: the paper's focal-loss figures as PNG, with their numbers.

    retinanet-ext plot-focal --output output/focal
    retinanet-ext plot-focal --output output/focal --config-file CONFIG \\
        --dataset bccd_val=voc:../shared/datasets/bccd/BCCD:val MODEL.WEIGHTS model_final.pth

Always writes figure 1 (loss against the probability of the ground-truth class for gamma
0, 0.5, 1, 2, 5): ``focal_loss_vs_probability.png``. Given a config with ``MODEL.WEIGHTS``,
also figure 4 (cumulative distribution of the normalised loss over the foreground and over
the background anchors, for several gamma) from the model's predictions on the images of
``DATASETS.TEST``'s first dataset (or ``--dataset-name``): ``focal_loss_cdf.png``. The
numbers of both go to ``focal_loss.json``. See :mod:`retinanet_ext.analysis.focal`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from typing import Any

from retinanet_ext_cli import CommandError, add_config_arguments

HELP = ("the paper's focal-loss figures: loss vs probability (fig. 1) and, for a checkpoint, "
        "the loss CDF over foreground/background anchors (fig. 4)")

FIGURE1_FILE = "focal_loss_vs_probability.png"
FIGURE4_FILE = "focal_loss_cdf.png"
NUMBERS_FILE = "focal_loss.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", metavar="DIR",
                        help="folder for the PNGs and focal_loss.json")
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME=FORMAT:...",
                        help="register a dataset (as train_net.py's --dataset); repeatable")
    parser.add_argument("--dataset-name", metavar="NAME",
                        help="figure 4's images (default: the first of DATASETS.TEST)")
    parser.add_argument("--max-images", type=int, default=50, metavar="N",
                        help="figure 4 uses the dataset's first N images (default: 50)")
    parser.add_argument("--gammas", default="0,0.5,1,2", metavar="G1,G2,...",
                        help="figure 4's gamma values (default: the paper's 0,0.5,1,2)")
    add_config_arguments(parser, required=False)


def _parse_gammas(text: str) -> tuple[float, ...]:
    try:
        gammas = tuple(float(part) for part in text.split(","))
    except ValueError as error:
        raise CommandError(f"--gammas must be numbers separated by commas, got {text!r}") from error
    if any(not gamma >= 0 for gamma in gammas):
        raise CommandError(f"--gammas must be >= 0, got {text!r}")
    return gammas


def run(args: argparse.Namespace) -> int:
    from retinanet_ext.analysis.focal import (
        focal_loss_curves,
        plot_focal_loss_curves,
        worked_values,
    )

    if not args.output:
        raise CommandError("--output DIR is required: the folder for the PNGs and focal_loss.json")
    gammas = _parse_gammas(args.gammas)
    if args.max_images < 1:
        raise CommandError(f"--max-images must be at least 1, got {args.max_images}")
    if not args.config_file and (args.opts or args.dataset or args.dataset_name):
        raise CommandError("figure 4 needs a trained model: give --config-file with "
                           "MODEL.WEIGHTS (without one, only figure 1 is drawn)")
    figure4 = _figure4(args, gammas) if args.config_file else None  # errors before writing
    os.makedirs(args.output, exist_ok=True)
    curves = focal_loss_curves()
    numbers: dict[str, Any] = {"figure1": {**curves, "worked_values": worked_values()},
                               "figure4": figure4}
    written = [plot_focal_loss_curves(curves, os.path.join(args.output, FIGURE1_FILE))]
    if figure4 is not None:
        from retinanet_ext.analysis.focal import plot_loss_cdfs

        title = f"{os.path.basename(figure4['checkpoint'])} on {figure4['dataset']}"
        written.append(plot_loss_cdfs(figure4, os.path.join(args.output, FIGURE4_FILE), title))
    path = os.path.join(args.output, NUMBERS_FILE)
    with open(path, "w") as f:
        json.dump(numbers, f, indent=1)
    for name in [*written, path]:
        print(f"wrote {name}")
    return 0


def _figure4(args: argparse.Namespace, gammas: tuple[float, ...]) -> dict[str, Any]:
    """Figure 4's numbers for the config's checkpoint (see the module docstring)."""
    from detectron2.modeling import build_model

    from retinanet_ext.analysis.focal import anchor_focal_losses, normalized_loss_cdf
    from retinanet_ext.data import register_dataset_spec
    from retinanet_ext.engine import (
        check_datasets_available,
        load_config,
        load_weights,
        resolve_device,
    )

    for spec in args.dataset:
        register_dataset_spec(spec)
    cfg = load_config(args.config_file, args.opts)
    resolve_device(cfg)
    if not cfg.MODEL.WEIGHTS:
        raise CommandError("figure 4 needs a trained model: set MODEL.WEIGHTS path/to/model.pth")
    name = args.dataset_name or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
    if not name:
        raise CommandError("figure 4 needs images: set DATASETS.TEST or --dataset-name")
    check_datasets_available([name])
    model = build_model(cfg)
    if not hasattr(model, "criterion"):
        raise CommandError(f"figure 4 needs retinanet_ext's model (MODEL.META_ARCHITECTURE "
                           f"RetinaNetExt, whose assigner labels the anchors), got "
                           f"{cfg.MODEL.META_ARCHITECTURE}")
    load_weights(model, cfg.MODEL.WEIGHTS)
    model.eval()
    losses = anchor_focal_losses(model, _input_batches(cfg, name, args.max_images), gammas)
    num_foreground, num_background = losses.counts()
    if num_foreground == 0 or num_background == 0:
        raise CommandError(f"dataset '{name}': {losses.num_images} images gave "
                           f"{num_foreground} foreground and {num_background} background "
                           f"anchors; figure 4 needs both (are there boxes in its images?)")
    result: dict[str, Any] = {"checkpoint": cfg.MODEL.WEIGHTS, "dataset": name,
                              "images": losses.num_images, "gammas": list(gammas)}
    for group, count in (("foreground", num_foreground), ("background", num_background)):
        cumulative = {}
        for gamma in gammas:
            fraction, cdf = normalized_loss_cdf(losses.concatenated(group, gamma))
            cumulative[f"{gamma:g}"] = cdf.tolist()
        result[group] = {"count": count, "fraction": fraction.tolist(), "cumulative": cumulative}
    return result


def _input_batches(cfg: Any, name: str, max_images: int) -> Iterator[list[dict]]:
    """The dataset's first images, one per batch, resized as at test time and with their
    ground truth (the trainer's ``ImageDatasetMapper`` in training mode, test resize)."""
    from detectron2.data import DatasetCatalog, detection_utils

    from retinanet_ext.data.mapper import ImageDatasetMapper

    mapper = ImageDatasetMapper(
        cfg, is_train=True, augmentations=detection_utils.build_augmentation(cfg, is_train=False))
    dataset_dicts = DatasetCatalog.get(name)[:max_images]
    step = max(1, len(dataset_dicts) // 5)
    for done, dataset_dict in enumerate(dataset_dicts, start=1):
        yield [mapper(dataset_dict)]
        if done % step == 0 or done == len(dataset_dicts):
            print(f"figure 4: {done}/{len(dataset_dicts)} images of {name}", flush=True)
