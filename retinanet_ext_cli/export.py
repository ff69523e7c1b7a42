"""``retinanet-ext export``: write a trained model as ONNX or TorchScript, and check it.

    retinanet-ext export --format onnx --config-file C MODEL.WEIGHTS W --output model.onnx \
        --verify

The file holds the network (dynamic batch, height and width) and the metadata the runtime
needs (class names, anchors, thresholds); run it with ``retinanet-ext predict --model
FILE`` or :class:`retinanet_ext.export.ExportedModel`. ``--verify`` runs it (onnxruntime
or torch.jit) beside PyTorch on sample images of several sizes (or ``--verify-input``)
and exits with status 1 if the detections differ (count, classes, boxes by more than
1e-2 px, scores by more than 1e-4).

``--int8 --calibration-images DIR`` writes an int8 ONNX model instead (post-training
quantization with onnxruntime, :mod:`retinanet_ext.export.quantize`), for CPUs without
native bf16; its activation ranges come from up to ``--calibration-count`` images like the
deployment's. int8 changes the outputs by design, so ``--verify`` (float32 parity) does not
apply: measure its AP (``benchmarks/precision_accuracy.py --runtimes onnx,onnx-int8``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from retinanet_ext_cli import CommandError, add_config_arguments

if TYPE_CHECKING:
    from retinanet_ext.predictor import Predictor

HELP = ("export a trained model to ONNX (float32, or int8 with --int8) or TorchScript "
        "(with --verify: parity with PyTorch)")


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
    parser.add_argument("--int8", action="store_true",
                        help="ONNX only: quantize to int8 (onnxruntime static quantization; "
                        "for CPUs without native bf16); needs --calibration-images")
    parser.add_argument("--calibration-images", nargs="+", metavar="PATH",
                        help="for --int8: image files or folders, like the deployment's")
    parser.add_argument("--calibration-count", type=int, default=32, metavar="N",
                        help="for --int8: at most N calibration images, spread over those "
                        "found (default 32)")


def run(args: argparse.Namespace) -> int:
    from retinanet_ext.export import ImageReadError, export_model, verify_export
    from retinanet_ext.predictor import Predictor

    if not args.output:
        raise CommandError("--output FILE is required")
    if args.format == "onnx" and args.opset < 17:
        raise CommandError(f"--opset {args.opset}: ONNX export needs opset 17 or later")
    calibration = _check_int8_flags(args)
    predictor = Predictor(args.config_file, opts=args.opts)
    try:
        if args.int8:
            path = _export_int8(predictor, args, calibration)
        else:
            path = export_model(predictor, args.output, args.format, opset=args.opset)
    except ImportError as error:
        raise CommandError(f"{args.format} export needs a package that is not installed "
                           f"({error}); pip install onnx onnxscript onnxruntime") from error
    except OSError as error:
        raise CommandError(f"cannot write {args.output}: {error}") from error
    except (ValueError, ImageReadError) as error:
        raise CommandError(str(error)) from error
    print(f"exported {args.format}{' int8' if args.int8 else ''} to {path}")
    if not args.verify:
        return 0
    try:
        report = verify_export(predictor, path, args.verify_input)
    except ImageReadError as error:
        raise CommandError(str(error)) from error
    print(report.format())
    return 0 if report.passed else 1


def _check_int8_flags(args: argparse.Namespace) -> list[str]:
    """The calibration files for --int8 (empty without it); a CommandError for flags that do
    not go together."""
    from retinanet_ext.export.quantize import calibration_files

    if not args.int8:
        if args.calibration_images:
            raise CommandError("--calibration-images is for --int8")
        return []
    if args.format != "onnx":
        raise CommandError(f"--int8 quantizes ONNX models; --format is {args.format}")
    if args.verify:
        raise CommandError("--verify checks float32 parity with PyTorch, which int8 changes by "
                           "design: verify a float32 export, and measure the int8 model's AP "
                           "(benchmarks/precision_accuracy.py --runtimes onnx,onnx-int8)")
    if not args.calibration_images:
        raise CommandError("--int8 needs --calibration-images (image files or folders like "
                           "the deployment's, e.g. the training images)")
    try:
        return calibration_files(args.calibration_images, args.calibration_count)
    except ValueError as error:
        raise CommandError(str(error)) from error


def _export_int8(predictor: Predictor, args: argparse.Namespace, calibration: list[str]) -> str:
    """Export float32 ONNX to a temporary file, then quantize it to ``args.output``."""
    import tempfile

    from retinanet_ext.export import export_model
    from retinanet_ext.export.quantize import quantize_onnx

    with tempfile.TemporaryDirectory(prefix="retinanet_ext_export_") as work:
        float32 = export_model(predictor, f"{work}/float32.onnx", "onnx", opset=args.opset)
        print(f"quantizing to int8 with {len(calibration)} calibration images", flush=True)
        return quantize_onnx(float32, args.output, calibration)
