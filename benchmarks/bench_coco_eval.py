"""Time COCO box evaluation: pycocotools (the reference) against the faster backends.

A synthetic COCO-sized set (default 5,000 images, 80 classes, about 7 objects per image as
in COCO val2017, 5% crowd boxes, 5% images without objects) and detections made from it:
most objects found with jittered boxes, some with the wrong class, plus false positives,
scores rounded to 0.01 so that ties occur. Each backend evaluates the same set (``evaluate``
+ ``accumulate`` + ``summarize``, loading the results included, as the evaluator runs it);
their 12 COCO numbers, precision and recall arrays are checked equal to pycocotools' to
1e-4, and the seconds and the ratio to pycocotools are written with machine and versions.

    .venv/bin/python benchmarks/bench_coco_eval.py                    # the full run
    .venv/bin/python benchmarks/bench_coco_eval.py --images 200 --out /tmp/x.md   # smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from _machine import cpu_model, load_average  # noqa: E402  (benchmarks/ is on sys.path)

from retinanet_ext import compat  # noqa: E402  (after the sys.path set-up above)
from retinanet_ext.evaluation import available_backends, evaluate_boxes  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "coco_eval_cpu.md"
TOLERANCE = 1e-4
IMAGE_SIZE = (480, 640)  # height, width


def synthetic_ground_truth(num_images: int, num_classes: int, rng: np.random.Generator, *,
                           objects_per_image: float = 7.3, crowd_fraction: float = 0.05,
                           empty_fraction: float = 0.05) -> dict[str, Any]:
    """A COCO dataset dict: boxes XYWH in pixels of a 640x480 image, sides 4-400 px drawn
    log-uniformly (small, medium and large objects all present), category ids 1..K."""
    height, width = IMAGE_SIZE
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": width, "height": height,
                       "file_name": f"{image_id:06d}.jpg"})
        count = 0 if rng.random() < empty_fraction else 1 + rng.poisson(objects_per_image - 1)
        sides = np.exp(rng.uniform(np.log(4), np.log(400), (count, 2)))
        sides = np.minimum(sides, [width - 1, height - 1])
        corners = rng.uniform(0, 1, (count, 2)) * ([width, height] - sides)
        classes = rng.integers(1, num_classes + 1, count)
        crowd = rng.random(count) < crowd_fraction
        for (x, y), (w, h), c, is_crowd in zip(corners, sides, classes, crowd, strict=True):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(c),
                "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h),
                "iscrowd": int(is_crowd),
            })
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def jittered_detections(ground_truth: dict[str, Any], rng: np.random.Generator, *,
                        recall: float = 0.8, wrong_class: float = 0.1,
                        false_positives_per_image: float = 10.0,
                        jitter: float = 0.12) -> list[dict[str, Any]]:
    """COCO results from ``ground_truth``: each object found with probability ``recall``
    (box corners moved by ``jitter`` x its size, class wrong with ``wrong_class``), plus
    Poisson(``false_positives_per_image``) random boxes per image; scores in 0.01 steps."""
    category_ids = [c["id"] for c in ground_truth["categories"]]
    detections = []
    for annotation in ground_truth["annotations"]:
        if rng.random() >= recall:
            continue
        x, y, w, h = annotation["bbox"]
        dx, dy, dw, dh = rng.normal(0, jitter, 4) * [w, h, w, h]
        category = annotation["category_id"]
        if rng.random() < wrong_class:
            category = int(rng.choice(category_ids))
        detections.append({
            "image_id": annotation["image_id"], "category_id": category,
            "bbox": [x + dx, y + dy, max(1.0, w + dw), max(1.0, h + dh)],
            "score": round(float(rng.beta(4, 2)), 2),
        })
    for image in ground_truth["images"]:
        width, height = image["width"], image["height"]
        for _ in range(rng.poisson(false_positives_per_image)):
            w, h = np.minimum(np.exp(rng.uniform(np.log(4), np.log(300), 2)), [width, height])
            detections.append({
                "image_id": image["id"], "category_id": int(rng.choice(category_ids)),
                "bbox": [float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h)),
                         float(w), float(h)],
                "score": round(float(rng.beta(2, 4)), 2),
            })
    return detections


def largest_difference(reference: Any, other: Any) -> float:
    """Largest absolute difference of the 12 stats, precision and recall arrays."""
    return max(
        float(np.max(np.abs(getattr(reference, field) - getattr(other, field))))
        for field in ("stats", "precision", "recall")
    )


def time_backends(ground_truth: dict, detections: list[dict], backends: list[str],
                  repeats: int) -> list[dict[str, Any]]:
    """Best-of-``repeats`` seconds of each backend, alternating, and its largest difference
    to pycocotools (the first backend)."""
    seconds: dict[str, list[float]] = {name: [] for name in backends}
    results = {}
    for _ in range(repeats):
        for name in backends:
            started = time.perf_counter()
            results[name] = evaluate_boxes(ground_truth, detections, name)
            seconds[name].append(time.perf_counter() - started)
    reference = results["pycocotools"]
    return [{
        "backend": name,
        "seconds": min(seconds[name]),
        "speedup": min(seconds["pycocotools"]) / min(seconds[name]),
        "max_abs_difference": largest_difference(reference, results[name]),
        "AP": float(results[name].stats[0] * 100),
    } for name in backends]


def versions() -> str:
    names = ("numpy", "pycocotools", "faster-coco-eval", "torch")
    found = []
    for name in names:
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
            continue
        where = Path(str(distribution.locate_file(""))).resolve()
        outside = Path(sys.prefix).resolve() not in where.parents
        found.append(f"{name} {distribution.version}" + (f" (from {where})" if outside else ""))
    import detectron2

    found.append(f"detectron2 {detectron2.__version__} "
                 f"({'with' if compat.has_compiled_extension() else 'without'} detectron2._C)")
    return ", ".join(found)


def write_table(rows: list[dict], args: argparse.Namespace, num_annotations: int,
                num_detections: int, out: Path) -> None:
    lines = [
        "# COCO box evaluation: seconds per full evaluation, CPU",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}  ",
        f"Machine: {cpu_model()}, {os.cpu_count()} logical CPUs, load average "
        f"{load_average()} at the end, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}  ",
        f"Python {platform.python_version()}; {versions()}  ",
        f"Set: {args.images} images, {args.classes} classes, {num_annotations} ground-truth "
        f"boxes, {num_detections} detections (seed {args.seed}); best of {args.repeats}, "
        "backends alternating; loading the results + evaluate + accumulate + summarize.",
        "",
        "| backend | seconds | speed-up vs pycocotools | max abs difference to pycocotools "
        "(12 stats, precision, recall) | AP |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(f"| {row['backend']} | {row['seconds']:.2f} | {row['speedup']:.2f}x | "
                     f"{row['max_abs_difference']:.1e} | {row['AP']:.3f} |")
    lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "versions": versions()},
                                                   indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--false-positives", type=float, default=10.0,
                        help="mean false-positive detections per image")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    ground_truth = synthetic_ground_truth(args.images, args.classes, rng)
    detections = jittered_detections(ground_truth, rng,
                                     false_positives_per_image=args.false_positives)
    backends = ["pycocotools"] + [b for b in available_backends() if b != "pycocotools"]
    rows = time_backends(ground_truth, detections, backends, args.repeats)
    write_table(rows, args, len(ground_truth["annotations"]), len(detections), args.out)
    print(args.out.read_text())
    worst = max(row["max_abs_difference"] for row in rows)
    if worst > TOLERANCE:
        print(f"FAIL: a backend differs from pycocotools by {worst:.2e} > {TOLERANCE}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
