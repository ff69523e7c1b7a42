"""A small, deterministic synthetic detection dataset: the regime focal loss is for.

Each image shows many small objects of several shape classes with imbalanced class
frequencies, on a cluttered background (smooth colour field, noise, lines, zig-zags,
arcs, blurred blobs and dots: clutter of non-target kinds). Most anchors are easy
background, a few are hard negatives, and the rarer classes have few examples.

Generation is deterministic: every image is drawn from its own random stream, seeded by
``(seed, split, index)``, so an image does not depend on how many images were asked for.
It writes, under ``output_dir``::

    train/000000.png ...   train.json   (COCO instances format, boxes only)
    val/000000.png ...     val.json
    manifest.json          (the parameters; written last)

A second call with the same parameters finds ``manifest.json`` and reuses the files.

:func:`register_synthetic_dataset` registers both splits in Detectron2's
``DatasetCatalog`` / ``MetadataCatalog`` through ``register_coco_instances``, so that
``COCOEvaluator`` evaluates against the JSON written here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

__all__ = [
    "CLASS_NAMES",
    "CLASS_FREQUENCIES",
    "DATASET_NAME_PREFIX",
    "GENERATOR_VERSION",
    "generate_synthetic_dataset",
    "register_synthetic_dataset",
    "synthetic_dataset_names",
]

#: Bumped whenever the drawing changes, so that stale data on disk is regenerated.
GENERATOR_VERSION = 2

#: The object classes (COCO category ids are 1-based positions in this tuple).
CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
#: Expected fraction of objects per class: one dominant class, the rarest at 5 %.
CLASS_FREQUENCIES: tuple[float, ...] = (0.55, 0.20, 0.12, 0.08, 0.05)

DATASET_NAME_PREFIX = "retinanet_ext_synthetic"
SPLITS: tuple[str, ...] = ("train", "val")
_SPLIT_IDS = {"train": 0, "val": 1}

# Saturated object colours (BGR). The background and most clutter are duller.
_OBJECT_COLOURS = np.array(
    [
        [40, 40, 230],  # red
        [40, 200, 40],  # green
        [230, 90, 30],  # blue
        [30, 220, 230],  # yellow
        [220, 40, 220],  # magenta
        [230, 230, 40],  # cyan
        [235, 235, 235],  # white
        [20, 140, 250],  # orange
    ],
    dtype=np.int16,
)

#: Each class's own colours (indices into _OBJECT_COLOURS); the pairs overlap little, so
#: colour is a strong but imperfect cue: see ``class_colour_prob``.
_CLASS_COLOURS = ((0, 7), (1, 5), (2, 4), (3, 6), (6, 0))

_MANIFEST = "manifest.json"


def synthetic_dataset_names(prefix: str = DATASET_NAME_PREFIX) -> dict[str, str]:
    """``{"train": "<prefix>_train", "val": "<prefix>_val"}``."""
    return {split: f"{prefix}_{split}" for split in SPLITS}


# ----------------------------------------------------------------------------- drawing


def _polygon(cx: float, cy: float, radius: float, n: int, angle: float) -> np.ndarray:
    """Vertices of a regular n-gon (float, shape (n, 2))."""
    t = angle + np.arange(n) * (2.0 * math.pi / n)
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)


def _fill(mask: np.ndarray, pts: np.ndarray) -> None:
    """Fill a polygon given with float vertices (4 bits of sub-pixel precision)."""
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255, lineType=cv2.LINE_8, shift=4)


def _shape_mask(class_id: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """A binary mask (uint8, 0/255) of one object of class ``class_id``, about ``size`` px.

    The mask is a square canvas with the shape centred in it; the caller crops it to
    the shape's extent.
    """
    side = int(math.ceil(size * 1.5)) + 4
    mask = np.zeros((side, side), np.uint8)
    c = side / 2.0
    r = size / 2.0
    angle = rng.uniform(0.0, 2.0 * math.pi)
    name = CLASS_NAMES[class_id]
    if name == "circle":
        cv2.circle(mask, (int(round(c * 16)), int(round(c * 16))), int(round(r * 16)), 255, -1,
                   lineType=cv2.LINE_8, shift=4)
    elif name == "ring":
        thickness = max(2, int(round(size / 6.0)))
        rr = max(1.0, r - thickness / 2.0)
        cv2.circle(mask, (int(round(c * 16)), int(round(c * 16))), int(round(rr * 16)), 255,
                   thickness, lineType=cv2.LINE_8, shift=4)
    elif name == "square":
        _fill(mask, _polygon(c, c, r * math.sqrt(2.0) * 0.85, 4, angle))
    elif name == "triangle":
        _fill(mask, _polygon(c, c, r * 1.1, 3, angle))
    elif name == "cross":
        half_w = max(1.0, size / 8.0)
        # a plus sign: two bars, rotated by ``angle``
        for bar_angle in (angle, angle + math.pi / 2.0):
            u = np.array([math.cos(bar_angle), math.sin(bar_angle)])
            v = np.array([-u[1], u[0]])
            signs = ((-1, -1), (1, -1), (1, 1), (-1, 1))
            corners = np.array([c + s1 * r * u + s2 * half_w * v for s1, s2 in signs])
            _fill(mask, corners)
    else:  # pragma: no cover - CLASS_NAMES and this function go together
        raise ValueError(f"unknown class {name!r}")
    return mask


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random colour field (float32 BGR, roughly 30..170)."""
    coarse = rng.uniform(30.0, 170.0, size=(4, 4, 3)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _draw_clutter(img: np.ndarray, rng: np.random.Generator, clutter: float) -> None:
    """Non-target clutter, drawn in place on a float32 BGR image."""
    h, w = img.shape[:2]
    scale = (h * w) / (128.0 * 128.0) * clutter

    def colour(saturated_p: float = 0.3) -> tuple[float, float, float]:
        if rng.random() < saturated_p:
            base = _OBJECT_COLOURS[rng.integers(len(_OBJECT_COLOURS))].astype(np.float32)
            return tuple(float(x) for x in base * rng.uniform(0.6, 1.0))
        return tuple(float(x) for x in rng.uniform(20.0, 200.0, size=3))

    # large blurred blobs (low contrast)
    blobs = np.zeros_like(img)
    for _ in range(rng.poisson(3 * scale)):
        center = (int(rng.integers(w)), int(rng.integers(h)))
        axes = (int(rng.integers(8, max(9, w // 4))), int(rng.integers(8, max(9, h // 4))))
        cv2.ellipse(blobs, center, axes, float(rng.uniform(0, 180)), 0, 360,
                    tuple(float(x) for x in rng.uniform(-50, 50, size=3)), -1)
    img += cv2.GaussianBlur(blobs, (0, 0), sigmaX=4.0)
    # straight lines
    for _ in range(rng.poisson(5 * scale)):
        p1 = (int(rng.integers(w)), int(rng.integers(h)))
        p2 = (int(rng.integers(w)), int(rng.integers(h)))
        cv2.line(img, p1, p2, colour(), int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
    # zig-zag polylines
    for _ in range(rng.poisson(2 * scale)):
        n = int(rng.integers(3, 7))
        start = rng.uniform(0, [w, h])
        steps = rng.normal(0.0, 10.0, size=(n, 2))
        pts = np.clip(start + np.cumsum(steps, axis=0), 0, [w - 1, h - 1]).astype(np.int32)
        cv2.polylines(img, [pts], False, colour(), 1, lineType=cv2.LINE_AA)
    # thin open arcs (less than half a circle: not a ring)
    for _ in range(rng.poisson(2 * scale)):
        center = (int(rng.integers(w)), int(rng.integers(h)))
        axes = (int(rng.integers(5, 20)), int(rng.integers(5, 20)))
        start = float(rng.uniform(0, 360))
        cv2.ellipse(img, center, axes, 0.0, start, start + float(rng.uniform(40, 160)),
                    colour(), 1, lineType=cv2.LINE_AA)
    # small dots
    n_dots = rng.poisson(12 * scale)
    if n_dots:
        ys = rng.integers(0, h, size=n_dots)
        xs = rng.integers(0, w, size=n_dots)
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
            cv2.circle(img, (x, y), int(rng.integers(1, 3)), colour(0.5), -1, lineType=cv2.LINE_AA)


def _overlaps(box: Sequence[float], boxes: list[list[float]], margin: float) -> bool:
    if not boxes:
        return False
    b = np.asarray(boxes)
    return bool(
        np.any(
            (b[:, 0] < box[2] + margin)
            & (box[0] < b[:, 2] + margin)
            & (b[:, 1] < box[3] + margin)
            & (box[1] < b[:, 3] + margin)
        )
    )


def _render_image(
    rng: np.random.Generator,
    image_size: tuple[int, int],
    objects_per_image: tuple[int, int],
    object_size: tuple[float, float],
    class_probs: np.ndarray,
    clutter: float,
    noise: float,
    class_colour_prob: float,
) -> tuple[np.ndarray, list[tuple[int, list[float], float]]]:
    """One image (uint8 BGR) and its objects ``(class_id, [x0, y0, x1, y1], area)``."""
    h, w = image_size
    img = _background(rng, h, w)
    _draw_clutter(img, rng, clutter)

    n_objects = int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))
    log_lo, log_hi = math.log(object_size[0]), math.log(object_size[1])
    objects: list[tuple[int, list[float], float]] = []
    boxes: list[list[float]] = []
    for _ in range(n_objects):
        class_id = int(rng.choice(len(class_probs), p=class_probs))
        size = math.exp(rng.uniform(log_lo, log_hi))
        mask = _shape_mask(class_id, size, rng)
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        mask = mask[y0:y1, x0:x1]
        mh, mw = mask.shape
        if mh >= h or mw >= w:
            continue
        for _attempt in range(30):
            ox = int(rng.integers(0, w - mw + 1))
            oy = int(rng.integers(0, h - mh + 1))
            box = [float(ox), float(oy), float(ox + mw), float(oy + mh)]
            if not _overlaps(box, boxes, margin=2.0):
                break
        else:
            continue  # no free spot: drop the object
        if rng.random() < class_colour_prob:
            colour_id = _CLASS_COLOURS[class_id][int(rng.integers(2))]
        else:
            colour_id = int(rng.integers(len(_OBJECT_COLOURS)))
        colour = _OBJECT_COLOURS[colour_id].astype(np.float32)
        colour = colour * rng.uniform(0.75, 1.05) + rng.normal(0.0, 10.0, size=3)
        region = img[oy:oy + mh, ox:ox + mw]
        region[mask > 0] = colour
        boxes.append(box)
        objects.append((class_id, box, float(mw * mh)))

    img += rng.normal(0.0, noise, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), objects


# -------------------------------------------------------------------------- generation


def _params(
    num_train: int,
    num_val: int,
    image_size: tuple[int, int],
    seed: int,
    objects_per_image: tuple[int, int],
    object_size: tuple[float, float],
    class_frequencies: Sequence[float],
    clutter: float,
    noise: float,
    class_colour_prob: float,
) -> dict[str, Any]:
    return {
        "generator_version": GENERATOR_VERSION,
        "num_images": {"train": int(num_train), "val": int(num_val)},
        "image_size": [int(image_size[0]), int(image_size[1])],
        "seed": int(seed),
        "objects_per_image": [int(objects_per_image[0]), int(objects_per_image[1])],
        "object_size": [float(object_size[0]), float(object_size[1])],
        "class_names": list(CLASS_NAMES),
        "class_frequencies": [float(f) for f in class_frequencies],
        "clutter": float(clutter),
        "noise": float(noise),
        "class_colour_prob": float(class_colour_prob),
    }


def _split_paths(output_dir: str) -> dict[str, dict[str, str]]:
    return {
        split: {
            "image_root": os.path.join(output_dir, split),
            "json_file": os.path.join(output_dir, f"{split}.json"),
        }
        for split in SPLITS
    }


def generate_synthetic_dataset(
    output_dir: str,
    num_train: int = 800,
    num_val: int = 200,
    image_size: int | tuple[int, int] = 128,
    seed: int = 0,
    *,
    objects_per_image: tuple[int, int] = (6, 14),
    object_size: tuple[float, float] = (10.0, 40.0),
    class_frequencies: Sequence[float] = CLASS_FREQUENCIES,
    clutter: float = 1.0,
    noise: float = 8.0,
    class_colour_prob: float = 0.75,
) -> dict[str, Any]:
    """Write the dataset under ``output_dir`` (or reuse it) and describe it.

    Args:
        output_dir: where the images, COCO JSON files and manifest go.
        num_train, num_val: number of images per split.
        image_size: ``H`` (square) or ``(H, W)``, in pixels.
        seed: the dataset's seed; same parameters give byte-identical files.
        objects_per_image: inclusive range of objects attempted per image (an object
            that finds no free spot is dropped).
        object_size: range of object sizes in px (log-uniform); boxes are tight.
        class_frequencies: probability of each class in :data:`CLASS_NAMES`.
        clutter: multiplies the amount of background clutter.
        noise: standard deviation of the pixel noise.
        class_colour_prob: probability that an object takes one of its class's two own
            colours; otherwise any of the 8 object colours (which clutter uses too).
            Shape is always the class; colour is a partial cue that speeds up learning.

    Returns:
        ``{"output_dir", "params", "splits": {split: {"image_root", "json_file",
        "num_images", "num_annotations"}}, "class_counts": {split: {name: count}},
        "reused": bool}``.
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    class_frequencies = [float(f) for f in class_frequencies]
    if len(class_frequencies) != len(CLASS_NAMES):
        raise ValueError(f"need {len(CLASS_NAMES)} class frequencies, got {class_frequencies}")
    params = _params(num_train, num_val, image_size, seed, objects_per_image, object_size,
                     class_frequencies, clutter, noise, class_colour_prob)
    paths = _split_paths(output_dir)
    manifest_path = os.path.join(output_dir, _MANIFEST)
    reused = _existing_manifest(manifest_path, params, paths)
    if reused is not None:
        return {**reused, "output_dir": output_dir, "reused": True}

    os.makedirs(output_dir, exist_ok=True)
    splits_info: dict[str, Any] = {}
    class_counts: dict[str, dict[str, int]] = {}
    for split, n_images in (("train", num_train), ("val", num_val)):
        splits_info[split], class_counts[split] = _write_split(
            paths[split], split, n_images, params
        )

    manifest = {"params": params, "splits": splits_info, "class_counts": class_counts}
    with open(manifest_path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(manifest_path + ".tmp", manifest_path)
    return {**manifest, "output_dir": output_dir, "reused": False}


def _write_split(
    split_paths: dict[str, str], split: str, n_images: int, params: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, int]]:
    """Render one split's images and write its COCO JSON; returns the split's manifest
    entry and its boxes per class name."""
    images, annotations, counts = _render_split(split_paths["image_root"], split, n_images,
                                                params)
    with open(split_paths["json_file"], "w") as f:
        json.dump(_coco_json(split, images, annotations), f)
    split_info = {**split_paths, "num_images": n_images, "num_annotations": len(annotations)}
    class_counts = {name: int(c) for name, c in zip(CLASS_NAMES, counts, strict=True)}
    return split_info, class_counts


def _existing_manifest(
    manifest_path: str, params: dict[str, Any], paths: dict[str, dict[str, str]]
) -> dict[str, Any] | None:
    """The manifest of a data set already generated with ``params``; a stale one is removed."""
    if not os.path.isfile(manifest_path):
        return None
    with open(manifest_path) as f:
        manifest = json.load(f)
    if manifest.get("params") == params and all(
        os.path.isfile(p["json_file"]) for p in paths.values()
    ):
        return manifest
    os.remove(manifest_path)  # stale or different: regenerate
    return None


def _render_split(
    image_root: str, split: str, num_images: int, params: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], np.ndarray]:
    """Render one split's images into ``image_root``; returns its COCO images, annotations
    and the object count per class."""
    if os.path.isdir(image_root):
        shutil.rmtree(image_root)
    os.makedirs(image_root)
    probs = np.asarray(params["class_frequencies"], dtype=np.float64)
    probs = probs / probs.sum()
    image_size = tuple(params["image_size"])
    images, annotations = [], []
    counts = np.zeros(len(CLASS_NAMES), dtype=np.int64)
    for index in range(num_images):
        seed = np.random.SeedSequence([params["seed"], _SPLIT_IDS[split], index])
        img, objects = _render_image(
            np.random.default_rng(seed), image_size, tuple(params["objects_per_image"]),
            tuple(params["object_size"]), probs, params["clutter"], params["noise"],
            params["class_colour_prob"],
        )
        file_name = f"{index:06d}.png"
        if not cv2.imwrite(os.path.join(image_root, file_name), img):
            raise OSError(f"could not write {os.path.join(image_root, file_name)}")
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name,
                       "height": image_size[0], "width": image_size[1]})
        for class_id, (x0, y0, x1, y1), area in objects:
            counts[class_id] += 1
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": class_id + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": area,
                "iscrowd": 0,
            })
    return images, annotations, counts


def _coco_json(
    split: str, images: list[dict[str, Any]], annotations: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "info": {"description": f"retinanet_ext synthetic shapes, {split} split",
                 "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"}
                       for i, name in enumerate(CLASS_NAMES)],
    }


def register_synthetic_dataset(
    output_dir: str, prefix: str = DATASET_NAME_PREFIX
) -> dict[str, str]:
    """Register the splits found under ``output_dir`` as ``<prefix>_train`` / ``<prefix>_val``.

    Re-registering a name (e.g. for another ``output_dir``) replaces the old entry.
    Returns ``{split: dataset_name}``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    names = synthetic_dataset_names(prefix)
    for split, paths in _split_paths(output_dir).items():
        if not os.path.isfile(paths["json_file"]):
            raise FileNotFoundError(
                f"{paths['json_file']} not found: run generate_synthetic_dataset first"
            )
        name = names[split]
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, paths["json_file"], paths["image_root"])
        # known before the JSON is first loaded (e.g. for the Visualizer)
        MetadataCatalog.get(name).set(thing_classes=list(CLASS_NAMES))
    return names
