"""``retinanet-ext``: one command-line tool for everything after ``train_net.py``.

Each subcommand is a module of this package with ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``; :data:`COMMANDS` maps the command
name to its module, so adding a command touches that table and its own module only.
Flags follow ``train_net.py``: ``--config-file``, trailing ``KEY VALUE`` config overrides
(``MODEL.WEIGHTS`` among them). A user error (bad config, dataset, checkpoint, input)
ends as one ``error:`` line on stderr with exit status 2.

    retinanet-ext --help
    python -m retinanet_ext predict --help
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "CommandError", "add_config_arguments", "build_parser", "main"]

#: command name -> module under retinanet_ext.cli (imported only when the command runs).
COMMANDS: dict[str, str] = {
    "predict": "predict",
    "export": "export",
    "plot": "plot",
    "analyze-anchors": "analyze_anchors",
    "show-data": "show_data",
    "plot-focal": "plot_focal",
}


class CommandError(Exception):
    """A user error a command reports as ``error: <message>`` with exit status 2."""


def add_config_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--config-file FILE`` and trailing ``KEY VALUE`` overrides, as in ``train_net.py``."""
    parser.add_argument(
        "--config-file", required=required, metavar="FILE", help="path to the config file"
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides, e.g. MODEL.WEIGHTS output/model_final.pth",
    )


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that are the user's to fix (reported without a traceback)."""
    from retinanet_ext.data import DatasetError
    from retinanet_ext.engine import CheckpointError, ConfigError, MissingDatasetError

    return (CommandError, ConfigError, MissingDatasetError, CheckpointError, DatasetError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retinanet-ext",
        description="Tools for retinanet_ext models and datasets (training is train_net.py).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"retinanet_ext.cli.{module_name}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(command_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``retinanet-ext`` console script and ``python -m retinanet_ext``."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.command_module.run(args) or 0)
    except _user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
