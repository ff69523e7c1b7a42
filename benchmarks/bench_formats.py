"""Loading speed of the label tools' formats against COCO JSON: the same generated images and
boxes written as COCO JSON, LabelMe JSON (one file per image), CVAT for images 1.1 XML and a
Label Studio JSON export, each registered from its ``--dataset`` spec and loaded into its
summary (``validate_dataset``: parsing, image look-up, image headers, box checks), which is
what ``--check-data`` (less the full decode) and the first ``DatasetCatalog.get`` cost.

Each format is timed best-of-``--repeats`` (wall clock; the process's CPU time beside it),
formats alternating, a fresh registration each time, after one untimed round that warms the
file cache; before each run a full garbage collection, then ``gc.freeze()``, so that no run
pays for walking the objects torch and Detectron2 made at import. A format slower than COCO
by more than ``--max-ratio`` fails the run (exit status 1).

    .venv/bin/python benchmarks/bench_formats.py                       # 3,000 images
    .venv/bin/python benchmarks/bench_formats.py --images 30 --repeats 1 --out /tmp/f.md
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from _machine import cpu_model, load_average, results_header  # noqa: E402  (benchmarks/ is on sys.path)

from retinanet_ext.data import (  # noqa: E402  (after the sys.path set-up above)
    LabeledImage,
    register_dataset_spec,
    unregister_dataset,
    validate_dataset,
    write_cvat_xml,
    write_labelstudio_json,
)

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "formats_cpu.md"
CLASSES = ["apple", "pear", "plum", "fig", "kiwi"]
IMAGE_SIZE = (64, 48)  # width, height: tiny files, so that parsing is what differs


def generated_images(folder: Path, count: int, rng: np.random.Generator) -> list[LabeledImage]:
    """``count`` tiny JPEG files with 0-8 boxes each (a tenth without any)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    width, height = IMAGE_SIZE
    images = []
    for index in range(count):
        path = folder / f"{index:06d}.jpg"
        Image.new("RGB", IMAGE_SIZE, (index % 256, 90, 30)).save(path)
        boxes_count = 0 if rng.random() < 0.1 else int(rng.integers(1, 9))
        corners = rng.uniform(0, 0.6, (boxes_count, 2)) * [width, height]
        sides = rng.uniform(0.1, 0.4, (boxes_count, 2)) * [width, height]
        images.append(LabeledImage(str(path), width, height,
                                   np.round(np.concatenate([corners, corners + sides], 1), 2),
                                   rng.integers(0, len(CLASSES), boxes_count)))
    return images


def write_coco(images: list[LabeledImage], path: Path) -> None:
    annotations = []
    for index, image in enumerate(images):
        for box, class_id in zip(image.boxes.tolist(), image.class_ids.tolist(), strict=True):
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": class_id + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    path.write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": Path(image.file_name).name, "width": image.width,
                    "height": image.height} for i, image in enumerate(images)],
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]}))


def write_labelme(images: list[LabeledImage], folder: Path) -> None:
    """LabelMe 5's files, one per image, with ``imagePath`` relative to the JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    for image in images:
        shapes = [{"label": CLASSES[c], "points": [box[:2], box[2:]], "group_id": None,
                   "description": "", "shape_type": "rectangle", "flags": {}, "mask": None}
                  for box, c in zip(image.boxes.tolist(), image.class_ids.tolist(), strict=True)]
        name = Path(image.file_name).name
        (folder / f"{Path(name).stem}.json").write_text(json.dumps({
            "version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": f"../images/{name}",
            "imageData": None, "imageHeight": image.height, "imageWidth": image.width},
            indent=2))


def write_datasets(root: Path, count: int, seed: int) -> dict[str, str]:
    """The same images and boxes in each format; format -> its ``--dataset`` fields."""
    images = generated_images(root / "images", count, np.random.default_rng(seed))
    write_coco(images, root / "coco.json")
    write_labelme(images, root / "labelme")
    classes = root / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    write_cvat_xml(images, CLASSES, str(root / "annotations.xml"))
    write_labelstudio_json(images, CLASSES, str(root / "labelstudio.json"))
    return {
        "coco": f"coco:{root}/coco.json:{root}/images",
        "labelme": f"labelme:{root}/labelme:classes={classes}",
        "cvat": f"cvat:{root}/annotations.xml:images={root}/images",
        "labelstudio": f"labelstudio:{root}/labelstudio.json:images={root}/images:"
                       f"classes={classes}",
    }


def time_formats(specs: dict[str, str], repeats: int) -> dict[str, dict]:
    """Best-of-``repeats`` seconds of register + validate per format, formats alternating."""
    seconds: dict[str, list[float]] = {name: [] for name in specs}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in specs}
    counts: dict[str, tuple[int, int]] = {}
    for round_index in range(repeats + 1):  # round 0 warms the file cache, untimed
        for name, spec in specs.items():
            dataset = f"bench_{name}_{round_index}"
            # A full collection walks every object torch and Detectron2 made at import
            # (0.15 s here); frozen, they leave the run, which then times the format alone.
            gc.collect()
            gc.freeze()
            started, cpu_started = time.perf_counter(), time.process_time()
            register_dataset_spec(f"{dataset}={spec}")
            summary = validate_dataset(dataset)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            unregister_dataset(dataset)
            gc.unfreeze()
            counts[name] = (summary.num_images, summary.num_boxes)
            if round_index:
                seconds[name].append(elapsed)
                cpu_seconds[name].append(cpu)
    coco, coco_cpu = min(seconds["coco"]), min(cpu_seconds["coco"])
    return {name: {"seconds": min(times), "ratio": min(times) / coco,
                   "cpu_seconds": min(cpu_seconds[name]),
                   "cpu_ratio": min(cpu_seconds[name]) / coco_cpu,
                   "images": counts[name][0], "boxes": counts[name][1], "runs": times}
            for name, times in seconds.items()}


def versions() -> str:
    found = []
    for name in ("numpy", "Pillow", "torch"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    import detectron2

    return ", ".join(found + [f"detectron2 {detectron2.__version__}"])


def write_table(rows: dict[str, dict], args: argparse.Namespace, out: Path) -> None:
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {os.cpu_count()} logical CPUs",
        "load average at the end": load_average(),
        "Python": platform.python_version(),
        "versions": versions(),
        "set": f"{args.images} images of {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} px, "
               f"{rows['coco']['boxes']} boxes, {len(CLASSES)} classes (seed {args.seed}); "
               f"best of {args.repeats}, formats alternating, after one untimed round",
    }
    command = " ".join([Path(sys.executable).name, *sys.argv])
    lines = [*results_header("Loading the label tools' formats against COCO JSON, CPU",
                             command, info),
             "| format | images | boxes | seconds | vs COCO | CPU seconds | vs COCO |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['images']} | {row['boxes']} | {row['seconds']:.3f} | "
                     f"{row['ratio']:.2f}x | {row['cpu_seconds']:.3f} | "
                     f"{row['cpu_ratio']:.2f}x |")
    lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"info": info, "rows": rows}, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-ratio", type=float, default=1.2,
                        help="fail when a format takes more than this times COCO's time")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_formats_"))
    try:
        rows = time_formats(write_datasets(work, args.images, args.seed), args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_table(rows, args, args.out)
    print(args.out.read_text())
    if any(row["images"] != rows["coco"]["images"] or row["boxes"] != rows["coco"]["boxes"]
           for row in rows.values()):
        print("FAIL: the formats did not load the same images and boxes")
        return 1
    slow = [name for name, row in rows.items() if row["ratio"] > args.max_ratio]
    if slow:
        print(f"FAIL: {', '.join(slow)} slower than COCO by more than {args.max_ratio:.2f}x")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
