"""``retinanet-ext export``: write a trained model as ONNX or TorchScript, and check it.

    retinanet-ext export --format onnx --config-file C MODEL.WEIGHTS W --output model.onnx \
        --verify

The file holds the network (dynamic batch, height and width) and the metadata the runtime
needs (class names, anchors, thresholds); run it with ``retinanet-ext predict --model
FILE`` or :class:`retinanet_ext.export.ExportedModel`. ``--verify`` runs it (onnxruntime
or torch.jit) beside PyTorch on sample images of several sizes (or ``--verify-input``)
and exits with status 1 if the detections differ (count, classes, boxes by more than
1e-2 px, scores by more than 1e-4).
"""

from __future__ import annotations

import argparse

from retinanet_ext.cli import CommandError, add_config_arguments

HELP = "export a trained model to ONNX or TorchScript (with --verify: parity with PyTorch)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_flags(parser)
    add_config_arguments(parser)


def _add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                        help="onnx (run with onnxruntime or OpenVINO) or torchscript")
    parser.add_argument("--output", metavar="FILE",
                        help="required: the file to write (e.g. model.onnx, model.ts)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17; default 18)")
    parser.add_argument("--verify", action="store_true",
                        help="compare the exported model with PyTorch on sample images")
    parser.add_argument("--verify-input", nargs="+", metavar="IMG",
                        help="images for --verify (default: generated images of 3 sizes)")


def run(args: argparse.Namespace) -> int:
    from retinanet_ext.export import ImageReadError, export_model, verify_export
    from retinanet_ext.predictor import Predictor

    if not args.output:
        raise CommandError("--output FILE is required")
    if args.format == "onnx" and args.opset < 17:
        raise CommandError(f"--opset {args.opset}: ONNX export needs opset 17 or later")
    predictor = Predictor(args.config_file, opts=args.opts)
    try:
        path = export_model(predictor, args.output, args.format, opset=args.opset)
    except ImportError as error:
        raise CommandError(f"{args.format} export needs a package that is not installed "
                           f"({error}); pip install onnx onnxscript onnxruntime") from error
    except OSError as error:
        raise CommandError(f"cannot write {args.output}: {error}") from error
    except ValueError as error:
        raise CommandError(str(error)) from error
    print(f"exported {args.format} to {path}")
    if not args.verify:
        return 0
    try:
        report = verify_export(predictor, path, args.verify_input)
    except ImageReadError as error:
        raise CommandError(str(error)) from error
    print(report.format())
    return 0 if report.passed else 1
