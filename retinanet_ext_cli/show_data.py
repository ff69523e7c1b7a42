"""``retinanet-ext show-data``: ground-truth boxes with class names drawn on a few images.

    retinanet-ext show-data --config-file configs/retinanet_R18_FPN_quick.yaml \\
        --dataset bccd_train=voc:../shared/datasets/bccd/BCCD:train --output gt/ --num 8

Draws N images of ``DATASETS.TRAIN`` (or of the ``--dataset`` specs), picked at random
with ``--seed``, with the same drawing code as predictions
(:func:`retinanet_ext.visualization.draw_boxes`), as validated (boxes clipped, bad ones
dropped); crowd regions are not drawn (training never uses them). With ``--augment``
each image goes through the training data mapper first (the trainer's
``ImageDatasetMapper``, Detectron2's ``DatasetMapper`` with ``is_train=True`` reading images
as the Predictor does: the training resize and random flip), so the picture is what the
model is trained on. Writes ``DIR/<n>_<dataset>_<image>.png``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from retinanet_ext_cli import CommandError, add_config_arguments

HELP = "draw the ground-truth boxes of a few training images (optionally after augmentation)"


def _add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME=FORMAT:PATH",
                        help="a dataset spec as in train_net.py (repeatable); drawn instead of "
                        "DATASETS.TRAIN")
    parser.add_argument("--output", metavar="DIR", help="folder for the PNGs (created)")
    parser.add_argument("--num", type=int, default=8, metavar="N",
                        help="how many images (default 8)")
    parser.add_argument("--augment", action="store_true",
                        help="draw the images as training sees them (resize and flip)")
    parser.add_argument("--seed", type=int, default=0, help="which images, and the flips")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_flags(parser)
    add_config_arguments(parser)


def _picked(dataset_names: list[str], num: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    import numpy as np
    from detectron2.data import DatasetCatalog

    records = [(name, record) for name in dataset_names for record in DatasetCatalog.get(name)]
    if not records:
        raise CommandError(f"no images in {', '.join(dataset_names)}")
    chosen = np.random.default_rng(seed).choice(len(records), min(num, len(records)),
                                                replace=False)
    return [records[i] for i in sorted(chosen)]


def _as_drawn(record: dict[str, Any], mapper: Any, input_format: str) -> tuple[Any, Any, Any]:
    """(RGB uint8 image, XYXY boxes, class ids) of a record, through ``mapper`` if given."""
    import numpy as np
    from detectron2.data.detection_utils import convert_image_to_rgb
    from detectron2.structures import BoxMode

    from retinanet_ext.structures import load_image_rgb

    if mapper is not None:
        mapped = mapper(record)
        image = convert_image_to_rgb(mapped["image"].permute(1, 2, 0).numpy(), input_format)
        instances = mapped["instances"]
        return (np.ascontiguousarray(image, dtype=np.uint8), instances.gt_boxes.tensor.numpy(),
                instances.gt_classes.numpy())
    annotations = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
    boxes = [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
             for a in annotations]
    return (load_image_rgb(record["file_name"], max_pixels=None)[0],  # as training reads it
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            np.asarray([a["category_id"] for a in annotations], dtype=np.int64))


def run(args: argparse.Namespace) -> int:
    if not args.output:
        raise CommandError("--output DIR is required: the folder for the drawn images")
    if args.num < 1:
        raise CommandError(f"--num must be at least 1, got {args.num}")

    import numpy as np
    from PIL import Image

    from retinanet_ext.data import dataset_classes, register_dataset_spec
    from retinanet_ext.data.mapper import ImageDatasetMapper
    from retinanet_ext.engine import load_config
    from retinanet_ext.visualization import draw_boxes

    cfg = load_config(args.config_file, args.opts)
    names = [register_dataset_spec(spec) for spec in args.dataset] or list(cfg.DATASETS.TRAIN)
    if not names:
        raise CommandError("no datasets: DATASETS.TRAIN is empty; pass --dataset")
    np.random.seed(args.seed)  # Detectron2's augmentations draw from NumPy's generator
    mapper = ImageDatasetMapper(cfg, is_train=True) if args.augment else None
    os.makedirs(args.output, exist_ok=True)
    written = []
    for number, (name, record) in enumerate(_picked(names, args.num, args.seed)):
        image, boxes, class_ids = _as_drawn(record, mapper, cfg.INPUT.FORMAT)
        drawn = draw_boxes(image, boxes, class_ids, dataset_classes(name))
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        path = os.path.join(args.output, f"{number:03d}_{name}_{stem}.png")
        Image.fromarray(drawn).save(path)
        written.append(path)
    print(f"{len(written)} image(s) with their ground-truth boxes"
          f"{' after the training augmentation' if mapper else ''} written to {args.output}")
    return 0
