"""``retinanet-ext analyze-anchors``: how well the anchors fit the training boxes, and a fix.

    retinanet-ext analyze-anchors --config-file configs/retinanet_R18_FPN_quick.yaml \\
        --dataset bccd_train=voc:../shared/datasets/bccd/BCCD:train --output anchors.png

For the training set at the config's training resize: per class and object size, the
share of boxes whose best anchor reaches the foreground IoU, the share left without a
foreground anchor (low-quality matches counted apart) and the anchors per box; then
anchor sizes / aspect ratios (and an input size where objects are too small for P3) that
cover more, with their coverage and the config lines to paste (see
:mod:`retinanet_ext.analysis`). ``--dataset`` specs are analysed instead of
``DATASETS.TRAIN``.
"""

from __future__ import annotations

import argparse

from retinanet_ext_cli import add_config_arguments

HELP = "anchor coverage of the training boxes per class and size, and anchors that fit better"


def _add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME=FORMAT:PATH",
                        help="a dataset spec as in train_net.py (repeatable); analysed instead "
                        "of DATASETS.TRAIN")
    parser.add_argument("--output", metavar="FILE.png",
                        help="also draw object sizes and aspect ratios per class against the "
                        "anchors into this PNG")
    parser.add_argument("--max-images", type=int, metavar="N",
                        help="analyse N images picked at random (seed 0); default: all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_flags(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from retinanet_ext.analysis import analyze_anchors
    from retinanet_ext.data import register_dataset_spec
    from retinanet_ext.engine import load_config
    from retinanet_ext_cli import CommandError

    if args.max_images is not None and args.max_images < 1:
        raise CommandError(f"--max-images must be at least 1, got {args.max_images}")
    cfg = load_config(args.config_file, args.opts)
    names = [register_dataset_spec(spec) for spec in args.dataset] or None
    analysis = analyze_anchors(cfg, names, max_images=args.max_images)
    print(analysis.report())
    if args.output:
        from retinanet_ext.analysis.plot import plot_anchor_analysis

        print(f"plot written to {plot_anchor_analysis(analysis, args.output)}")
    return 0
