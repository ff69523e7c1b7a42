"""``retinanet-ext``: one command-line tool for everything after ``train_net.py``.

A package of its own, beside :mod:`retinanet_ext`, because ``import retinanet_ext`` registers
the model components and so imports torch and Detectron2 (seconds): ``--help`` must not. No
module here imports ``retinanet_ext``, torch, Detectron2, numpy or cv2 at module level, only
inside a command's ``run`` (tests/test_cli_fast.py checks it); :func:`main` applies the
Detectron2 compat bridges once, just before the command runs.

Each subcommand is a module of this package with ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``; :data:`COMMANDS` maps the command
name to its module, so adding a command touches that table and its own module only.
Flags follow ``train_net.py``: ``--config-file``, trailing ``KEY VALUE`` config overrides
(``MODEL.WEIGHTS`` among them); a command's flags may also come after the overrides
(:func:`reparse_trailing_flags`, applied to every command), so a command checks its own
required flags in ``run`` rather than with argparse's ``required=True``. A user error (bad
config, dataset, checkpoint, input) ends as one ``error:`` line on stderr with exit status 2.

    retinanet-ext --help
    python -m retinanet_ext predict --help     # or python -m retinanet_ext_cli
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "COMMANDS",
    "CommandError",
    "add_config_arguments",
    "build_parser",
    "main",
    "reparse_trailing_flags",
]

#: A config override's key, e.g. MODEL.WEIGHTS (the KEY of trailing KEY VALUE pairs).
CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")

#: command name -> module of this package (imported to build the parser: light at module level).
COMMANDS: dict[str, str] = {
    "predict": "predict",
    "export": "export",
    "plot": "plot",
    "plot-focal": "plot_focal",
    "convert-weights": "convert_weights",
    "sweep": "sweep",
    "analyze-anchors": "analyze_anchors",
    "show-data": "show_data",
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


class _FlagsOnlyParser(argparse.ArgumentParser):
    """A command's optional flags only (no positionals, none required): what
    :func:`reparse_trailing_flags` looks for among the overrides."""

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        if not args or not str(args[0]).startswith("-"):
            return None
        kwargs.pop("required", None)
        return super().add_argument(*args, **kwargs)


def reparse_trailing_flags(
    args: argparse.Namespace, add_flags: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Take a command's own flags out of the trailing ``KEY VALUE`` overrides (in place).

    The overrides are an ``argparse.REMAINDER``, which swallows every later token, so in
    ``--config-file C MODEL.WEIGHTS W --input X`` argparse leaves ``--input X`` in
    ``args.opts``; this parses them out (flags given there win) and leaves the pairs. A
    list flag that swallowed a pair (``--input a.jpg MODEL.DEVICE cpu``) gives it back.
    """
    parser = _FlagsOnlyParser(add_help=False)
    add_flags(parser)
    try:
        flags, rest = parser.parse_known_args(list(args.opts or []))
    except SystemExit as error:  # argparse exits on a malformed flag
        raise CommandError(f"cannot parse {' '.join(args.opts)}") from error
    defaults = vars(parser.parse_known_args([])[0])
    for key, value in vars(flags).items():
        if value != defaults[key]:
            setattr(args, key, value)
    args.opts = rest
    for key, value in vars(args).items():
        if isinstance(value, list) and key != "opts":
            keys = [i for i, item in enumerate(value) if CONFIG_KEY.fullmatch(str(item))]
            if keys:
                setattr(args, key, value[: keys[0]])
                args.opts = list(args.opts) + value[keys[0]:]


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
        module = importlib.import_module(f"retinanet_ext_cli.{module_name}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(command_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``retinanet-ext`` console script, ``python -m retinanet_ext`` and
    ``python -m retinanet_ext_cli``."""
    args = build_parser().parse_args(argv)
    from retinanet_ext import compat  # the first heavy import: after --help has exited

    compat.apply()
    try:
        if getattr(args, "opts", None):
            reparse_trailing_flags(args, args.command_module.add_arguments)
        return int(args.command_module.run(args) or 0)
    except _user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
