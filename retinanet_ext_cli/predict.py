"""``retinanet-ext predict``: detect objects in images and write JSON, drawings and CSV.

    retinanet-ext predict --config-file C MODEL.WEIGHTS W --input IMG|DIR|GLOB... --output DIR
    retinanet-ext predict --model model.onnx --input DIR --output DIR   # an exported model

Writes, under ``--output``: ``predictions.json`` (COCO results format, one entry per
detection, plus ``file_name`` and ``category_name``; ``category_id`` is the model's
0-based class index), ``<image>.png`` per input with the boxes drawn,
``predictions.csv`` with ``--csv``, ``labels/FORMAT/`` with ``--save-labels FORMAT`` (the
detections as annotations to correct in a labelling tool: COCO, YOLO, Pascal VOC, CVAT or
Label Studio; :mod:`retinanet_ext.data.label_writers`), and ``summary.json`` (images,
detection counts, skipped files, labels written). Images that cannot be read are named
on stderr and skipped; the rest are processed. Exit status: 0 when every input was
processed, 1 when some were skipped (the outputs for the others are written: a script
sees the partial failure without parsing the output), 2 for usage errors (bad config,
checkpoint or model, no input image at all, an unknown --save-labels format).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from typing import Any

from retinanet_ext_cli import CommandError, add_config_arguments

HELP = "detect objects in images: predictions.json, drawn images, optional CSV"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# The keys of retinanet_ext.data.label_writers.LABEL_WRITERS, for --help without importing it
# (tests/test_save_labels.py checks they agree).
LABEL_FORMATS = ("coco", "yolo", "voc", "cvat", "labelstudio")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_flags(parser)
    add_config_arguments(parser, required=False)


def _add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", metavar="IMG|DIR|GLOB",
                        help="required: image files, folders (their images, not recursive) "
                             "or glob patterns (quote them)")
    parser.add_argument("--output", metavar="DIR", help="required: the output folder")
    parser.add_argument("--model", metavar="FILE",
                        help="an exported model (.onnx: onnxruntime, .xml: OpenVINO, .ts: "
                             "TorchScript) instead of --config-file and MODEL.WEIGHTS")
    parser.add_argument("--backend", choices=("onnxruntime", "openvino", "torchscript"),
                        help="runtime for --model (default: from its suffix)")
    parser.add_argument("--score-thresh", type=float, metavar="T",
                        help="keep detections scoring above T (default: the model's "
                             "MODEL.RETINANET.SCORE_THRESH_TEST)")
    parser.add_argument("--csv", action="store_true",
                        help="also write predictions.csv (file_name,x1,y1,x2,y2,class_name,"
                             "score)")
    parser.add_argument("--no-draw", action="store_true", help="do not write drawn images")
    parser.add_argument("--save-labels", action="append", metavar="FORMAT", default=[],
                        help="also write the detections as annotations to import into a "
                             "labelling tool and correct, under OUTPUT/labels/FORMAT/: "
                             f"{', '.join(LABEL_FORMATS)}; repeatable")


def expand_inputs(patterns: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Image paths from files, folders and globs (in order, duplicates dropped), and the
    (pattern, reason) of each input that names nothing."""
    paths: list[str] = []
    missing: list[tuple[str, str]] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(os.path.join(pattern, name) for name in os.listdir(pattern)
                           if name.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                missing.append((pattern, f"no image files ({', '.join(IMAGE_EXTENSIONS)})"))
        elif os.path.isfile(pattern):
            found = [pattern]
        elif glob.has_magic(pattern):
            found = sorted(path for path in glob.glob(pattern) if os.path.isfile(path))
            if not found:
                missing.append((pattern, "the pattern matches no file"))
        else:
            found = []
            missing.append((pattern, "no such file or folder"))
        paths.extend(path for path in found if path not in paths)
    return paths, missing


def _build_model(args: argparse.Namespace) -> Any:
    if args.model:
        if args.config_file or args.opts:
            raise CommandError("give either --model (an exported file) or --config-file with "
                               "MODEL.WEIGHTS, not both")
        from retinanet_ext.export import ExportedModel

        try:
            return ExportedModel(args.model, args.backend, score_thresh=args.score_thresh)
        except (OSError, ValueError) as error:
            raise CommandError(f"model {args.model}: {error}") from error
        except ImportError as error:
            raise CommandError(f"model {args.model}: the runtime is not installed ({error}); "
                               "pip install onnxruntime (or openvino)") from error
    if not args.config_file:
        raise CommandError("give --config-file C MODEL.WEIGHTS W, or --model FILE")
    from retinanet_ext.engine import configure_cpu_threads
    from retinanet_ext.predictor import Predictor

    predictor = Predictor(args.config_file, opts=args.opts, score_thresh=args.score_thresh,
                          batch_size=1)
    configure_cpu_threads(predictor.cfg)
    return predictor


def _drawn_name(path: str, used: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    name, suffix = f"{stem}.png", 1
    while name in used:
        name, suffix = f"{stem}_{suffix}.png", suffix + 1
    used.add(name)
    return name


def _write_json(path: str, data: Any) -> None:
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(partial, path)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from retinanet_ext.export import ImageReadError

    if not args.input or not args.output:
        raise CommandError("--input and --output are required")
    label_dirs = _label_dirs(args)
    paths, missing = expand_inputs(args.input)
    for pattern, reason in missing:
        print(f"warning: input {pattern}: {reason}", file=sys.stderr)
    if not paths:
        raise CommandError(f"no image to process in --input {' '.join(args.input)}")
    model = _build_model(args)
    os.makedirs(args.output, exist_ok=True)
    detections_json: list[dict] = []
    images: list[dict] = []
    skipped: list[dict] = [{"file_name": p, "error": r} for p, r in missing]
    csv_rows: list[list] = []
    used_names: set[str] = set()
    labeled: list[Any] = []  # LabeledImage, with --save-labels
    for path in tqdm(paths, desc="predict", unit="image", file=sys.stderr,
                     disable=None if len(paths) > 1 else True):
        try:
            image_rgb, _ = model.load(path)
        except ImageReadError as error:
            tqdm.write(f"skipped: {error}", file=sys.stderr)
            skipped.append({"file_name": path, "error": str(error)})
            continue
        detections = model(image_rgb, rgb=True)
        detections.file_name = path
        image_id = len(images) + 1
        detections_json.extend(detections.to_coco(image_id))
        entry = {"id": image_id, "file_name": path, "height": detections.image_size[0],
                 "width": detections.image_size[1], "num_detections": len(detections)}
        if not args.no_draw:
            entry["drawn"] = _draw(model, image_rgb, detections, args.output, used_names)
        images.append(entry)
        if label_dirs:
            labeled.append(_labeled_image(detections))
        csv_rows.extend([path, *(round(v, 2) for v in box), name, round(score, 4)]
                        for box, name, score in zip(detections.boxes.tolist(),
                                                    detections.class_names,
                                                    detections.scores.tolist(), strict=True))
    labels = _write_labels(label_dirs, labeled, list(model.class_names))
    _write_outputs(args, model, detections_json, images, skipped, csv_rows, labels)
    print(f"{len(images)} images, {len(detections_json)} detections -> "
          f"{os.path.join(args.output, 'predictions.json')}"
          + (f"; {len(skipped)} skipped: {', '.join(s['file_name'] for s in skipped)}"
             if skipped else ""))
    for label_format, written in labels.items():
        print(f"labels ({label_format}): {written['files']} files in {written['folder']}")
    return 1 if skipped else 0


def _label_dirs(args: argparse.Namespace) -> dict[str, str]:
    """``--save-labels`` as {format: OUTPUT/labels/FORMAT}, checked before the model runs:
    known formats, and folders that hold no labels yet (corrections made there would be
    overwritten)."""
    if not args.save_labels:
        return {}
    from retinanet_ext.data.label_writers import LABEL_WRITERS

    formats = list(dict.fromkeys(name.lower() for name in args.save_labels))
    unknown = [name for name in formats if name not in LABEL_WRITERS]
    if unknown:
        raise CommandError(f"unknown --save-labels format {unknown[0]!r}; the formats: "
                           f"{', '.join(LABEL_WRITERS)}")
    folders = {name: os.path.join(args.output, "labels", name) for name in formats}
    for folder in folders.values():
        if os.path.isdir(folder) and os.listdir(folder):
            raise CommandError(f"{folder} holds files already (labels corrected there would be "
                               "overwritten): give another --output, or delete the folder")
    return folders


def _labeled_image(detections: Any) -> Any:
    from retinanet_ext.data.labeled_image import LabeledImage

    height, width = detections.image_size
    return LabeledImage(detections.file_name, width, height, detections.boxes,
                        detections.class_ids, detections.scores)


def _write_labels(folders: dict[str, str], labeled: list[Any],
                  class_names: list[str]) -> dict[str, dict]:
    """Each ``--save-labels`` format's files; {format: {"folder", "files"}} for the summary."""
    from retinanet_ext.data.label_writers import LABEL_WRITERS

    written = {}
    for label_format, folder in folders.items():
        paths = LABEL_WRITERS[label_format](labeled, class_names, folder)
        written[label_format] = {"folder": folder, "files": len(paths)}
    return written


def _draw(model: Any, image_rgb: Any, detections: Any, output: str, used: set[str]) -> str:
    from PIL import Image

    from retinanet_ext.visualization import draw_boxes

    drawn = draw_boxes(image_rgb, detections.boxes, detections.class_ids, model.class_names,
                       detections.scores)
    name = _drawn_name(detections.file_name, used)
    Image.fromarray(drawn).save(os.path.join(output, name))
    return name


def _write_outputs(args: argparse.Namespace, model: Any, detections: list[dict],
                   images: list[dict], skipped: list[dict], csv_rows: list[list],
                   labels: dict[str, dict]) -> None:
    _write_json(os.path.join(args.output, "predictions.json"), detections)
    _write_json(os.path.join(args.output, "summary.json"), {
        "model": args.model or model.cfg.MODEL.WEIGHTS,
        "class_names": list(model.class_names),
        "score_thresh": model.score_thresh,
        "images": images,
        "skipped": skipped,
        "labels": labels,
    })
    if args.csv:
        with open(os.path.join(args.output, "predictions.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file_name", "x1", "y1", "x2", "y2", "class_name", "score"])
            writer.writerows(csv_rows)
