"""Registration of the real shared datasets (bccd, coco128, facemask) and their quirks.

The expected numbers are those of ``../shared/datasets/README.md``; the tests skip when
the shared datasets are absent (set ``RETINANET_EXT_DATASETS``), and fail under ``CI=true``.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image

from retinanet_ext.data import (
    DatasetError,
    check_data,
    check_num_classes,
    dataset_classes,
    list_voc_ids,
    make_split,
    register_coco_dataset,
    register_dataset_spec,
    register_voc_dataset,
    validate_dataset,
)


@pytest.fixture(scope="module")
def bccd_root(datasets_root: Path) -> Path:
    return datasets_root / "bccd" / "BCCD"


@pytest.fixture(scope="module")
def facemask_root(datasets_root: Path) -> Path:
    return datasets_root / "facemask" / "archive"


@pytest.fixture(scope="module")
def coco128_paths(datasets_root: Path) -> tuple[Path, Path]:
    root = datasets_root / "coco128"
    return root / "annotations" / "instances_train2017.json", root / "train2017"


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.name == "retinanet_ext.data" and r.levelno == logging.WARNING
    ]


# --- bccd: Pascal VOC with ImageSets; two zero-area boxes --------------------------------


def test_bccd_train_split(new_name, bccd_root, caplog):
    name = register_voc_dataset(new_name("bccd"), str(bccd_root), "train")
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.data"):
        summary = validate_dataset(name)
    assert summary.num_images == 205
    assert summary.thing_classes == ["Platelets", "RBC", "WBC"]
    # BloodImage_00343 is in train, BloodImage_00338 is not.
    assert summary.dropped_by_reason["zero-area"] == 1
    assert any("BloodImage_00343.xml" in w and "zero-area" in w for w in _warnings(caplog))
    records = DatasetCatalog.get(name)
    assert len(records) == 205
    first = records[0]
    assert first["file_name"].endswith("BloodImage_00001.jpg")
    assert (first["width"], first["height"]) == (640, 480)
    assert first["annotations"][0]["bbox_mode"] == BoxMode.XYXY_ABS
    assert MetadataCatalog.get(name).evaluator_type == "coco"


def test_bccd_all_drops_the_two_zero_area_boxes(new_name, bccd_root, caplog):
    name = register_voc_dataset(new_name("bccd"), str(bccd_root))  # no split: every XML
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.data"):
        summary = validate_dataset(name)
    assert summary.num_images == 364
    assert summary.dropped_boxes == 2
    assert summary.dropped_by_reason["zero-area"] == 2
    assert summary.clipped_boxes == 0
    assert summary.num_boxes == 4888 - 2
    assert summary.boxes_per_class == {"Platelets": 361, "RBC": 4155 - 2, "WBC": 372}
    warnings = _warnings(caplog)
    for file_name in ("BloodImage_00338.xml", "BloodImage_00343.xml"):
        assert sum(file_name in w for w in warnings) == 1, warnings
    # the zero-area boxes are really gone from the dicts
    for record in DatasetCatalog.get(name):
        for annotation in record["annotations"]:
            x1, y1, x2, y2 = annotation["bbox"]
            assert x2 > x1 and y2 > y1


def test_bccd_splits_share_classes(new_name, bccd_root):
    train = register_voc_dataset(new_name("train"), str(bccd_root), "train")
    val = register_voc_dataset(new_name("val"), str(bccd_root), "val")
    test = register_voc_dataset(new_name("test"), str(bccd_root), "test")
    assert [validate_dataset(n).num_images for n in (train, val, test)] == [205, 87, 72]
    cfg = get_cfg()
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    assert check_num_classes(cfg, [train, val, test]) == ["Platelets", "RBC", "WBC"]


# --- coco128: COCO JSON; two images without annotations; ten crowd boxes ---------------


def test_coco128(new_name, coco128_paths):
    json_file, image_root = coco128_paths
    name = register_coco_dataset(new_name("coco"), str(json_file), str(image_root))
    summary = validate_dataset(name)
    assert summary.num_images == 128
    assert summary.num_boxes == 939
    assert summary.crowd_boxes == 10
    assert summary.images_without_boxes == 2
    assert summary.dropped_boxes == 0
    assert summary.num_classes == 80  # the file declares COCO's 80; 71 are used
    used = [c for c in summary.thing_classes
            if summary.boxes_per_class[c] + summary.crowd_per_class[c]]
    assert len(used) == 71
    metadata = MetadataCatalog.get(name)
    assert metadata.json_file == str(json_file)  # COCOEvaluator scores the original file
    assert metadata.thing_classes[0] == "person"
    assert metadata.thing_dataset_id_to_contiguous_id[90] == 79
    records = DatasetCatalog.get(name)
    assert records[0]["image_id"] == 9  # original COCO ids, as in the JSON
    assert sum(not r["annotations"] for r in records) == 2  # images without boxes kept
    crowd = [a for r in records for a in r["annotations"] if a["iscrowd"]]
    assert len(crowd) == 10
    assert all(a["bbox_mode"] == BoxMode.XYWH_ABS for r in records for a in r["annotations"])
    assert {a["category_id"] for r in records for a in r["annotations"]} <= set(range(80))


def test_coco128_crowd_boxes_are_not_trained_on(new_name, coco128_paths):
    """Detectron2's DatasetMapper removes crowd regions: they never become positives."""
    json_file, image_root = coco128_paths
    name = register_coco_dataset(new_name("coco"), str(json_file), str(image_root))
    record = next(
        r for r in DatasetCatalog.get(name) if any(a["iscrowd"] for a in r["annotations"])
    )
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (128,)
    cfg.INPUT.MAX_SIZE_TRAIN = 256
    mapped = DatasetMapper(cfg, is_train=True)(record)
    non_crowd = [a for a in record["annotations"] if not a["iscrowd"]]
    assert len(mapped["instances"]) == len(non_crowd) < len(record["annotations"])


# --- facemask: VOC-like without ImageSets; 12 boxes one pixel past the edge ------------


def test_facemask(new_name, facemask_root, caplog):
    name = register_voc_dataset(new_name("facemask"), str(facemask_root))
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.data"):
        summary = validate_dataset(name)
    assert summary.num_images == 853
    assert summary.clipped_boxes == 12
    assert summary.dropped_boxes == 0
    assert summary.num_boxes == 4072
    assert summary.boxes_per_class == {
        "con_mascarilla": 3232, "mascarilla_mal_puesta": 123, "sin_mascarilla": 717
    }
    warnings = _warnings(caplog)
    per_file = [w for w in warnings if ".xml: " in w]
    assert len(per_file) == 11  # 12 boxes in 11 files: one line a file
    assert all("clipped" in w for w in per_file)
    assert sum(w.count("clipped") for w in per_file) == 12
    assert any("maksssksksss603.xml" in w for w in per_file)
    assert any("boxes clipped to the image: 12" in w for w in warnings)  # the summary line
    for record in DatasetCatalog.get(name):
        for annotation in record["annotations"]:
            x1, y1, x2, y2 = annotation["bbox"]
            assert 0 <= x1 < x2 <= record["width"] and 0 <= y1 < y2 <= record["height"]


def test_facemask_random_split_by_spec(new_name, facemask_root):
    split = "train=0.8,val=0.2,seed=0"
    train = register_dataset_spec(f"{new_name('fm_train')}=voc:{facemask_root}:train@{split}")
    val = register_dataset_spec(f"{new_name('fm_val')}=voc:{facemask_root}:val@{split}")
    train_files = {r["file_name"] for r in DatasetCatalog.get(train)}
    val_files = {r["file_name"] for r in DatasetCatalog.get(val)}
    assert (len(train_files), len(val_files)) == (682, 171)
    assert not train_files & val_files
    expected = make_split(list_voc_ids(str(facemask_root / "annotations")),
                          {"train": 0.8, "val": 0.2}, seed=0)
    assert sorted(Path(f).stem for f in val_files) == expected["val"]
    assert dataset_classes(train) == dataset_classes(val)  # classes from every file


# --- specs, catalogs, evaluation --------------------------------------------------------


def test_register_each_format_by_spec(new_name, bccd_root, coco128_paths, tmp_path):
    json_file, image_root = coco128_paths
    Image.new("RGB", (20, 10)).save(tmp_path / "a.jpg")
    (tmp_path / "boxes.csv").write_text("a.jpg,1,1,5,5,cat\n")
    specs = {
        "voc": f"{new_name('voc')}=voc:{bccd_root}:val",
        "coco": f"{new_name('coco')}=coco:{json_file}:{image_root}",
        "csv": f"{new_name('csv')}=csv:{tmp_path / 'boxes.csv'}",
    }
    images = {}
    for data_format, spec in specs.items():
        name = register_dataset_spec(spec)
        assert name == spec.split("=", 1)[0]
        images[data_format] = len(DatasetCatalog.get(name))
    assert images == {"voc": 87, "coco": 128, "csv": 1}


def test_registering_twice(new_name, bccd_root):
    name = new_name("bccd")
    register_voc_dataset(name, str(bccd_root), "train")
    register_voc_dataset(name, str(bccd_root), "train")  # same arguments: nothing to do
    with pytest.raises(DatasetError, match=f"'{name}' is already registered"):
        register_voc_dataset(name, str(bccd_root), "val")


def test_missing_split_names_the_available_ones(new_name, bccd_root):
    with pytest.raises(DatasetError, match=r"nosuch\.txt.*train"):
        register_voc_dataset(new_name("bccd"), str(bccd_root), "nosuch")


def test_check_num_classes_mismatch(new_name, bccd_root):
    name = register_voc_dataset(new_name("bccd"), str(bccd_root), "train")
    cfg = get_cfg()
    cfg.MODEL.RETINANET.NUM_CLASSES = 80
    with pytest.raises(ValueError) as error:
        check_num_classes(cfg, [name])
    message = str(error.value)
    for expected in ("NUM_CLASSES is 80", "3 classes", name, "MODEL.RETINANET.NUM_CLASSES 3"):
        assert expected in message
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = ()
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    assert check_num_classes(cfg) == ["Platelets", "RBC", "WBC"]


def test_check_num_classes_datasets_disagree(new_name, bccd_root, facemask_root):
    bccd = register_voc_dataset(new_name("bccd"), str(bccd_root), "train")
    facemask = register_voc_dataset(new_name("fm"), str(facemask_root))
    cfg = get_cfg()
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    with pytest.raises(ValueError, match="different classes"):
        check_num_classes(cfg, [bccd, facemask])


def test_check_data_prints_a_table(new_name, bccd_root, capsys):
    name = register_voc_dataset(new_name("bccd"), str(bccd_root), "val")
    out = io.StringIO()
    (summary,) = check_data([name], file=out)
    table = out.getvalue()
    assert f"Dataset '{name}'" in table and "87 images" in table
    for label in ("RBC", "images without boxes", "clipped boxes", "dropped boxes", "crowd"):
        assert label in table
    assert summary.num_images == 87


def test_unregistered_dataset_is_a_clear_error():
    with pytest.raises(DatasetError, match="'no_such_dataset' is not registered"):
        validate_dataset("no_such_dataset")


def test_coco_evaluator_on_a_voc_dataset(new_name, tmp_path):
    """A VOC dataset has no COCO json: COCOEvaluator converts the dicts (needs
    thing_classes). Its own ground truth as predictions must score AP 100."""
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    objects = {"img1": [("dog", (10, 10, 60, 50)), ("cat", (70, 20, 110, 70))],
               "img2": [("cat", (5, 5, 40, 45))]}
    for image_id, boxes in objects.items():
        Image.new("RGB", (120, 80)).save(root / "JPEGImages" / f"{image_id}.jpg")
        xml = "".join(
            f"<object><name>{c}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for c, b in boxes
        )
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>120</width><height>80</height></size>{xml}</annotation>"
        )
    name = register_voc_dataset(new_name("voc"), str(root))
    assert not hasattr(MetadataCatalog.get(name), "json_file")
    evaluator = COCOEvaluator(name, tasks=("bbox",), distributed=False,
                              output_dir=str(tmp_path / "eval"), use_fast_impl=False)
    evaluator.reset()
    for record in DatasetCatalog.get(name):
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in record["annotations"]]))
        instances.scores = torch.ones(len(record["annotations"]))
        instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]])
        evaluator.process([record], [{"instances": instances}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
