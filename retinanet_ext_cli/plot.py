"""``retinanet-ext plot``: training curves of one or more runs as a PNG.

    retinanet-ext plot output/run_a output/run_b --output curves.png

Reads each OUTPUT_DIR's ``metrics.json`` (Detectron2's) and draws total, classification
and box loss and the learning rate against the iteration, the runs overlaid.
"""

from __future__ import annotations

import argparse

from retinanet_ext_cli import CommandError

HELP = "plot training curves (losses, learning rate) from OUTPUT_DIR/metrics.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="OUTPUT_DIR",
                        help="training output folders (or metrics.json files); overlaid")
    parser.add_argument("--output", default="training_curves.png", metavar="FILE.png",
                        help="the PNG to write (default: training_curves.png)")
    parser.add_argument("--labels", nargs="+", metavar="NAME",
                        help="one legend name per run (default: the folder names)")


def run(args: argparse.Namespace) -> int:
    from retinanet_ext.plots import MetricsError, plot_training_curves

    if args.labels and len(args.labels) != len(args.run_dirs):
        raise CommandError(f"--labels gives {len(args.labels)} names for "
                           f"{len(args.run_dirs)} runs")
    try:
        path = plot_training_curves(args.run_dirs, args.output, args.labels)
    except MetricsError as error:
        raise CommandError(str(error)) from error
    print(f"training curves of {len(args.run_dirs)} run(s) written to {path}")
    return 0
