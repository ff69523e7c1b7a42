"""Class-balanced sampling with Detectron2's ``RepeatFactorTrainingSampler`` on the project's
datasets: repeat factors against hand-computed ones, and the Trainer's loader using them."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler
from PIL import Image

import retinanet_ext  # noqa: F401  (registers the components)
from retinanet_ext.data import register_coco_dataset, register_csv_dataset
from retinanet_ext.engine import Trainer
from tests._tiny_training import tiny_cfg

#: Five 64x64 images: "cell" in four, "rare" in one (beside a cell), one image without boxes.
IMAGES = {
    "a.png": [("cell", (4, 4, 30, 30))],
    "b.png": [("cell", (10, 10, 40, 44))],
    "c.png": [("cell", (2, 30, 28, 60)), ("rare", (34, 6, 60, 30))],
    "d.png": [("cell", (20, 20, 50, 50))],
    "e.png": [],
}
CLASSES = ["cell", "rare"]


def _write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in IMAGES:
        pixels = rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)


def _register_csv(folder: Path, name: str) -> str:
    _write_images(folder)
    lines = []
    for image, boxes in IMAGES.items():
        lines += [f"{image},{x1},{y1},{x2},{y2},{cls}" for cls, (x1, y1, x2, y2) in boxes]
        lines += [] if boxes else [f"{image},,,,,"]
    (folder / "boxes.csv").write_text("\n".join(lines) + "\n")
    return register_csv_dataset(name, str(folder / "boxes.csv"))


def _register_coco(folder: Path, name: str) -> str:
    _write_images(folder)
    images, annotations = [], []
    for image_id, (image, boxes) in enumerate(IMAGES.items(), start=1):
        images.append({"id": image_id, "file_name": image, "width": 64, "height": 64})
        for cls, (x1, y1, x2, y2) in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": CLASSES.index(cls) + 1, "iscrowd": 0,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "ann.json").write_text(json.dumps(data))
    return register_coco_dataset(name, str(folder / "ann.json"), str(folder))


def _factors_by_image(dataset_dicts: list[dict], factors: torch.Tensor) -> dict[str, float]:
    return {os.path.basename(d["file_name"]): float(f)
            for d, f in zip(dataset_dicts, factors, strict=True)}


@pytest.mark.parametrize("register", [_register_csv, _register_coco], ids=["csv", "coco"])
def test_repeat_factors_are_the_hand_computed_ones(register, tmp_path: Path, new_name) -> None:
    name = register(tmp_path, new_name("rfs"))
    dataset_dicts = DatasetCatalog.get(name)
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
        dataset_dicts, 0.5)
    # t = 0.5; f(cell) = 4/5 -> r = max(1, sqrt(0.5 / 0.8)) = 1;
    # f(rare) = 1/5 -> r = sqrt(0.5 / 0.2) = sqrt(2.5) = 1.5811; no boxes -> 1.
    assert _factors_by_image(dataset_dicts, factors) == pytest.approx(
        {"a.png": 1.0, "b.png": 1.0, "c.png": math.sqrt(2.5), "d.png": 1.0, "e.png": 1.0})


def test_trainer_loader_uses_the_sampler(tmp_path: Path, new_name, monkeypatch) -> None:
    name = _register_csv(tmp_path / "data", new_name("rfs"))
    cfg = tiny_cfg(tmp_path / "out", name, name, "MODEL.RETINANET.NUM_CLASSES", "2",
                   "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler",
                   "DATALOADER.REPEAT_THRESHOLD", "0.5")
    built = []
    original_init = RepeatFactorTrainingSampler.__init__

    def spy_init(self, repeat_factors, *args, **kwargs):
        built.append(repeat_factors.clone())
        original_init(self, repeat_factors, *args, **kwargs)

    monkeypatch.setattr(RepeatFactorTrainingSampler, "__init__", spy_init)
    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert len(batch) == 2 and all("instances" in item for item in batch)
    # DATALOADER.FILTER_EMPTY_ANNOTATIONS (on by default) drops e.png first:
    # f(cell) = 4/4 -> 1; f(rare) = 1/4 -> sqrt(0.5 / 0.25) = sqrt(2).
    assert len(built) == 1
    assert sorted(built[0].tolist()) == pytest.approx([1.0, 1.0, 1.0, math.sqrt(2)])


def test_sampler_draws_the_rare_image_more_often() -> None:
    factors = torch.tensor([1.0, 1.0, math.sqrt(2), 1.0])
    sampler = RepeatFactorTrainingSampler(factors, shuffle=True, seed=0)
    drawn = list(itertools.islice(iter(sampler), 8000))
    share = drawn.count(2) / len(drawn)
    # Stochastic rounding: image 2 appears sqrt(2) times per epoch on average.
    assert share == pytest.approx(math.sqrt(2) / (3 + math.sqrt(2)), abs=0.02)
