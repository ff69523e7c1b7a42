"""COCOBoxEvaluator: Detectron2's COCOEvaluator's numbers and files, plus per-class AP50,
the no-detections report, explained NaNs and precision-recall curves."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from retinanet_ext.data import DatasetError
from retinanet_ext.engine import ConfigError, Trainer
from retinanet_ext.evaluation import (
    BACKEND_ENV_VAR,
    COCOBoxEvaluator,
    evaluate_boxes,
    watch_highest_score,
)
from retinanet_ext.evaluation.pr_curves import IOU_SETTINGS

LOGGER = "retinanet_ext.evaluation.coco_evaluator"


def make_records(num_images: int, num_classes: int, seed: int) -> list[dict]:
    """Detectron2 records, XYXY boxes, with a crowd box and an image without objects."""
    rng = np.random.default_rng(seed)
    records = []
    for image_id in range(num_images):
        annotations = []
        for _ in range(0 if image_id == 1 else int(rng.integers(1, 6))):
            w, h = np.exp(rng.uniform(np.log(6), np.log(150), 2))
            x, y = rng.uniform(0, 200 - w), rng.uniform(0, 160 - h)
            annotations.append({"bbox": [x, y, x + w, y + h], "bbox_mode": BoxMode.XYXY_ABS,
                                "category_id": int(rng.integers(num_classes)),
                                "iscrowd": int(len(records) == 2 and not annotations)})
        records.append({"file_name": f"{image_id}.jpg", "image_id": image_id, "height": 160,
                        "width": 200, "annotations": annotations})
    return records


def register(name: str, records: list[dict], classes: list[str]) -> str:
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=classes)
    return name


def predictions(records: list[dict], num_classes: int, seed: int) -> list[dict]:
    """Jittered ground truth with random scores and some wrong classes, plus false positives."""
    rng = np.random.default_rng(seed + 100)
    outputs = []
    for record in records:
        boxes = [np.asarray(a["bbox"]) + rng.normal(0, 4, 4) for a in record["annotations"]]
        classes = [a["category_id"] if rng.random() > 0.2 else int(rng.integers(num_classes))
                   for a in record["annotations"]]
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, 150), rng.uniform(0, 120)
            boxes.append(np.asarray([x, y, x + rng.uniform(5, 50), y + rng.uniform(5, 40)]))
            classes.append(int(rng.integers(num_classes)))
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.tensor(np.asarray(boxes).reshape(-1, 4),
                                                  dtype=torch.float32))
        instances.scores = torch.tensor(rng.random(len(boxes)), dtype=torch.float32)
        instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
        outputs.append({"instances": instances})
    return outputs


def run(evaluator, records: list[dict], outputs: list[dict]) -> dict:
    evaluator.reset()
    for record, output in zip(records, outputs, strict=True):
        evaluator.process([record], [output])
    return evaluator.evaluate()


@pytest.mark.parametrize("num_classes", [1, 3])
def test_same_metrics_and_results_file_as_detectron2_coco_evaluator(
        new_name, tmp_path: Path, num_classes: int) -> None:
    classes = [f"class{i}" for i in range(num_classes)]
    records = make_records(12, num_classes, seed=num_classes)
    name = register(new_name(), records, classes)
    outputs = predictions(records, num_classes, seed=num_classes)
    theirs = run(COCOEvaluator(name, tasks=("bbox",), distributed=False, use_fast_impl=False,
                               output_dir=str(tmp_path / "theirs")), records, outputs)["bbox"]
    ours = run(COCOBoxEvaluator(name, str(tmp_path / "ours"), distributed=False),
               records, outputs)["bbox"]
    assert 1.0 < ours["AP"] < 99.0
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key
    assert {f"AP50-{c}" for c in classes} | {f"AP-{c}" for c in classes} <= set(ours)
    results_file = "coco_instances_results.json"
    assert (json.loads((tmp_path / "ours" / results_file).read_text())
            == json.loads((tmp_path / "theirs" / results_file).read_text()))


def test_per_class_ap50_is_pycocotools_precision_at_iou_half(new_name, tmp_path: Path) -> None:
    classes = ["a", "b", "c"]
    records = make_records(15, 3, seed=5)
    name = register(new_name(), records, classes)
    ours = run(COCOBoxEvaluator(name, str(tmp_path), distributed=False, backend="pycocotools"),
               records, predictions(records, 3, seed=5))["bbox"]
    # Per-class AP50 by hand: each class alone is a one-category COCO evaluation.
    from detectron2.data.datasets.coco import convert_to_coco_dict

    coco = convert_to_coco_dict(name)
    detections = json.loads((tmp_path / "coco_instances_results.json").read_text())
    for category in coco["categories"]:
        alone = {**coco, "categories": [category],
                 "annotations": [a for a in coco["annotations"]
                                 if a["category_id"] == category["id"]]}
        mine = [d for d in detections if d["category_id"] == category["id"]]
        expected = evaluate_boxes(alone, mine, "pycocotools").stats[1] * 100
        assert ours[f"AP50-{category['name']}"] == pytest.approx(expected, abs=1e-6)
    assert ours["AP50"] == pytest.approx(np.mean([ours[f"AP50-{c}"] for c in classes]))


class TinyDenseModel(torch.nn.Module):
    """A stand-in with a dense head: ``head`` returns ([logits], [deltas]) per level."""

    def __init__(self, top_logit: float) -> None:
        super().__init__()
        self.head = torch.nn.Identity()
        self.top_logit = top_logit
        self.test_score_thresh = 0.05

    def forward(self, batch: list[dict]) -> list[dict]:
        logits = torch.full((len(batch), 9 * 3, 4, 5), -9.0)
        logits[0, 3, 1, 2] = self.top_logit
        self.head(([logits, logits[:, :, :2, :2] - 1], [torch.zeros(len(batch), 36, 4, 5)]))
        return [{"instances": Instances((160, 200), pred_boxes=Boxes(torch.zeros(0, 4)),
                                        scores=torch.zeros(0),
                                        pred_classes=torch.zeros(0, dtype=torch.int64))}
                for _ in batch]


def test_no_detections_are_reported_in_words_with_ap_zero_not_nan(
        new_name, tmp_path: Path, caplog) -> None:
    classes = ["a", "b", "c"]
    records = make_records(6, 3, seed=1)
    for record in records:  # no object larger than 96x96: APl is undefined
        record["annotations"] = [a for a in record["annotations"]
                                 if (a["bbox"][2] - a["bbox"][0]) * (a["bbox"][3] - a["bbox"][1])
                                 < 90 ** 2]
    name = register(new_name(), records, classes)
    model = TinyDenseModel(top_logit=-3.2)
    evaluator = COCOBoxEvaluator(name, str(tmp_path), distributed=False)
    with caplog.at_level(logging.INFO, logger=LOGGER), watch_highest_score(model):
        evaluator.reset()
        for record in records:
            evaluator.process([record], model([record]))
        results = evaluator.evaluate()["bbox"]
    log = caplog.text
    assert "No detections" in log
    assert "any of the 6 images" in log
    assert "score threshold 0.05" in log
    assert f"highest score the model gave was {1 / (1 + math.exp(3.2)):.4g}" in log
    present = {classes[a["category_id"]] for r in records for a in r["annotations"]}
    for key in ["AP", "AP50", "AP75", "APs", "APm"] + [f"AP-{c}" for c in present] \
            + [f"AP50-{c}" for c in present]:
        assert results[key] == 0.0, key
    assert math.isnan(results["APl"])
    assert "APl is NaN (undefined, not 0): the ground truth has no non-crowd object of size " \
           "large" in log


def test_no_detections_without_a_watched_model_still_says_so(new_name, caplog) -> None:
    records = make_records(4, 2, seed=2)
    name = register(new_name(), records, ["a", "b"])
    evaluator = COCOBoxEvaluator(name, distributed=False, score_thresh=0.3)
    empty = [{"instances": Instances((160, 200), pred_boxes=Boxes(torch.zeros(0, 4)),
                                     scores=torch.zeros(0),
                                     pred_classes=torch.zeros(0, dtype=torch.int64))}] * 4
    with caplog.at_level(logging.INFO, logger=LOGGER):
        results = run(evaluator, records, empty)["bbox"]
    assert "any of the 4 images" in caplog.text and "score threshold 0.3" in caplog.text
    assert "not recorded" in caplog.text
    assert results["AP"] == 0.0


@pytest.mark.parametrize("num_classes", [3, 12])  # one axes; small multiples
def test_pr_curves_are_written_and_match_the_precision_array(
        new_name, tmp_path: Path, num_classes: int) -> None:
    classes = [f"c{i}" for i in range(num_classes)]
    records = make_records(20, num_classes, seed=num_classes)
    name = register(new_name(), records, classes)
    run(COCOBoxEvaluator(name, str(tmp_path), distributed=False), records,
        predictions(records, num_classes, seed=3))
    for file_part, _ in IOU_SETTINGS.values():
        png = tmp_path / f"pr_curves_{file_part}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    data = json.loads((tmp_path / "pr_curves.json").read_text())
    # The same evaluation, independently: the written results against the ground truth.
    from detectron2.data.datasets.coco import convert_to_coco_dict

    detections = json.loads((tmp_path / "coco_instances_results.json").read_text())
    precision = evaluate_boxes(convert_to_coco_dict(name), detections,
                               "pycocotools").precision[:, :, :, 0, -1]  # [T, R, K]
    np.testing.assert_allclose(data["recall"], np.linspace(0, 1, 101))
    for k, name_k in enumerate(classes):
        at_50 = data["curves"]["0.50"][name_k]
        averaged = data["curves"]["0.50:0.95"][name_k]
        if (precision[0, :, k] == -1).all():  # no ground truth of this class
            assert at_50 is None and averaged is None
            continue
        np.testing.assert_allclose(at_50, precision[0, :, k], atol=1e-12)
        np.testing.assert_allclose(averaged, precision[:, :, k].mean(axis=0), atol=1e-12)
    assert any(max(curve or [0]) > 0 for curve in data["curves"]["0.50"].values())


def test_no_output_dir_writes_nothing_and_skips_curves(new_name, tmp_path: Path,
                                                      monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    records = make_records(5, 2, seed=4)
    name = register(new_name(), records, ["a", "b"])
    results = run(COCOBoxEvaluator(name, distributed=False), records,
                  predictions(records, 2, seed=4))
    assert "AP50-a" in results["bbox"]
    assert list(tmp_path.iterdir()) == []


def test_class_id_beyond_the_dataset_is_a_clear_error(new_name) -> None:
    records = make_records(3, 2, seed=6)
    name = register(new_name(), records, ["a", "b"])
    outputs = predictions(records, 5, seed=6)
    for output in outputs:
        output["instances"].pred_classes[:] = 4
    with pytest.raises(ValueError, match=r"class 4, but dataset .* has 2 classes"):
        run(COCOBoxEvaluator(name, distributed=False), records, outputs)


def test_unreadable_json_file_names_the_file(new_name, tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    name = register(new_name(), make_records(2, 1, seed=0), ["a"])
    MetadataCatalog.get(name).set(json_file=str(bad))
    with pytest.raises(DatasetError, match=f"annotation file {bad} of dataset"):
        COCOBoxEvaluator(name, distributed=False)


def test_json_file_dataset_uses_the_dataset_category_ids(datasets_root: Path, new_name,
                                                         tmp_path: Path) -> None:
    from detectron2.data.datasets import register_coco_instances

    root = datasets_root / "coco128"
    name = new_name("coco128")
    register_coco_instances(name, {}, str(root / "annotations" / "instances_train2017.json"),
                            str(root / "train2017"))
    # Built before the dataset is loaded, when Detectron2 has not yet put the class names
    # and the category-id mapping into the metadata (load_coco_json does that on loading).
    evaluator = COCOBoxEvaluator(name, str(tmp_path), distributed=False)
    records = DatasetCatalog.get(name)[:16]
    metadata = MetadataCatalog.get(name)
    outputs = []
    for record in records:  # the ground truth itself, perfect scores: AP 100 on these images
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                 for a in record["annotations"] if not a.get("iscrowd")]
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor(
            [a["category_id"] for a in record["annotations"] if not a.get("iscrowd")])
        outputs.append({"instances": instances})
    run(evaluator, records, outputs)
    written = json.loads((tmp_path / "coco_instances_results.json").read_text())
    dataset_ids = set(metadata.thing_dataset_id_to_contiguous_id)
    assert {d["category_id"] for d in written} <= dataset_ids
    assert max(d["category_id"] for d in written) > len(metadata.thing_classes) - 1  # not 0..K-1


def test_trainer_builds_this_evaluator_and_a_bad_backend_is_a_config_error(
        new_name, tmp_path: Path, monkeypatch) -> None:
    from retinanet_ext.engine import load_config

    name = register(new_name(), make_records(2, 1, seed=0), ["a"])
    cfg = load_config(None, ["OUTPUT_DIR", str(tmp_path)])
    evaluator = Trainer.build_evaluator(cfg, name)
    assert isinstance(evaluator, COCOBoxEvaluator)
    monkeypatch.setenv(BACKEND_ENV_VAR, "no-such-backend")
    with pytest.raises(ConfigError, match="unknown COCO evaluation backend 'no-such-backend'"):
        Trainer.build_evaluator(cfg, name)


@pytest.mark.slow
def test_eval_of_an_untrained_model_reports_no_detections_through_the_trainer(
        datasets_root: Path, new_name, tmp_path: Path, caplog) -> None:
    """The real path of ``--eval-only``: Trainer.test -> our evaluator, the score watched.

    A randomly initialised RetinaNet scores every anchor near its 0.01 prior, under the
    default 0.05 threshold: nothing is detected, and the evaluation must say so.
    """
    from detectron2.data.datasets import register_coco_instances

    from retinanet_ext.engine import evaluate, load_config

    source = datasets_root / "coco128" / "annotations" / "instances_train2017.json"
    data = json.loads(source.read_text())
    data["images"] = sorted(data["images"], key=lambda image: image["id"])[:3]
    kept = {image["id"] for image in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
    (tmp_path / "three.json").write_text(json.dumps(data))
    name = new_name("c3")
    register_coco_instances(name, {}, str(tmp_path / "three.json"),
                            str(datasets_root / "coco128" / "train2017"))
    config = str(Path(__file__).resolve().parent.parent / "configs"
                 / "retinanet_R18_FPN_quick.yaml")
    cfg = load_config(config, [
        "DATASETS.TEST", f"('{name}',)", "MODEL.RETINANET.NUM_CLASSES", "80",
        "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "224",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out"),
        "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).eval()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        results = evaluate(cfg, model)["bbox"]  # one dataset: not keyed by name
    message = next(r.getMessage() for r in caplog.records if "No detections" in r.getMessage())
    assert f"any of the 3 images of '{name}'" in message and "score threshold 0.05" in message
    highest = float(re.search(r"highest score the model gave was ([0-9.e-]+)\.", message)[1])
    assert 0.001 < highest < 0.05
    assert results["AP"] == 0.0 and results["AP50"] == 0.0
    inference = tmp_path / "out" / "inference" / name
    assert json.loads((inference / "coco_instances_results.json").read_text()) == []
    assert (inference / "pr_curves_iou50.png").is_file()
