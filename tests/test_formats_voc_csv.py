"""VOC folder layouts (annots/, LabelImg's flat folder) and CSV with a header (TF OD API).

The fixtures follow public files exactly (cited at each), with small images made here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from retinanet_ext.data import (
    DatasetError,
    register_csv_dataset,
    register_dataset_spec,
    register_voc_dataset,
    validate_dataset,
)


def _image(path: Path, size: tuple[int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (20, 60, 200)).save(path)
    return path


def _labelimg_xml(folder: str, filename: str, path: str, size: tuple[int, int],
                  objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    """What LabelImg's PascalVocWriter writes (github.com/HumanSignal/labelImg,
    libs/pascal_voc_io.py, commit 0196b017): tab-indented, the annotator's absolute
    <path>, <source><database>Unknown</database></source>, pose/truncated/difficult."""
    body = "".join(
        f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n"
        f"\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n\t\t<bndbox>\n"
        f"\t\t\t<xmin>{b[0]}</xmin>\n\t\t\t<ymin>{b[1]}</ymin>\n\t\t\t<xmax>{b[2]}</xmax>\n"
        f"\t\t\t<ymax>{b[3]}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        for name, b in objects
    )
    return (
        f'<annotation verified="yes">\n\t<folder>{folder}</folder>\n'
        f"\t<filename>{filename}</filename>\n\t<path>{path}</path>\n\t<source>\n"
        f"\t\t<database>Unknown</database>\n\t</source>\n\t<size>\n"
        f"\t\t<width>{size[0]}</width>\n\t\t<height>{size[1]}</height>\n\t\t<depth>3</depth>\n"
        f"\t</size>\n\t<segmented>0</segmented>\n{body}</annotation>\n"
    )


def test_labelimg_flat_folder(new_name, tmp_path):
    """LabelImg saves each XML beside its image; the <path> is the annotator's machine's."""
    folder = tmp_path / "HondaChargeStation"
    _image(folder / "P1010105.JPG", (2048, 1536))
    (folder / "P1010105.xml").write_text(_labelimg_xml(
        "HondaChargeStation", "P1010105.JPG",
        "/home/kang/Downloads/HondaChargeStation/P1010105.JPG", (2048, 1536),
        [("miimo_charge_station", (777, 627, 1309, 796))]))
    _image(folder / "P1010106.jpg", (2048, 1536))
    (folder / "P1010106.xml").write_text(_labelimg_xml(
        "HondaChargeStation", "P1010106.jpg", "C:\\Users\\me\\P1010106.jpg", (2048, 1536),
        [("miimo_charge_station", (10, 20, 300, 400)), ("car", (1000, 900, 1500, 1300))]))
    name = register_dataset_spec(f"{new_name()}=voc:{folder}")
    summary = validate_dataset(name)
    assert summary.num_images == 2
    assert summary.boxes_per_class == {"car": 1, "miimo_charge_station": 2}
    records = DatasetCatalog.get(name)
    assert [Path(r["file_name"]).name for r in records] == ["P1010105.JPG", "P1010106.jpg"]
    assert records[0]["annotations"][0]["bbox"] == [777, 627, 1309, 796]


def test_voc_with_annots_and_images_folders(new_name, tmp_path):
    """The layout the issue reports as failing: annots/ + images/, no ImageSets."""
    root = tmp_path / "dataset"
    for stem in ("0001", "0002", "0003"):
        _image(root / "images" / f"{stem}.png", (320, 240))
        (root / "annots").mkdir(parents=True, exist_ok=True)
        (root / "annots" / f"{stem}.xml").write_text(_labelimg_xml(
            "images", f"{stem}.png", f"/data/images/{stem}.png", (320, 240),
            [("helmet", (40, 30, 90, 100))]))
    (root / "labels").mkdir()  # a YOLO labels folder beside it holds no XML: not chosen
    (root / "labels" / "0001.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    name = register_voc_dataset(new_name(), str(root), "train@train=0.67,val=0.33,seed=0")
    assert validate_dataset(name).num_images == 2
    assert MetadataCatalog.get(name).image_root == str(root / "images")


def test_voc_folders_given_as_key_value_fields(new_name, tmp_path):
    root = tmp_path / "set"
    _image(root / "pics" / "a.jpg", (100, 80))
    (root / "boxes").mkdir(parents=True)
    (root / "boxes" / "a.xml").write_text(_labelimg_xml(
        "pics", "a.jpg", "/x/a.jpg", (100, 80), [("dog", (1, 1, 50, 40))]))
    name = register_dataset_spec(f"{new_name()}=voc:{root}:annotations=boxes:images=pics")
    assert validate_dataset(name).num_boxes == 1
    with pytest.raises(DatasetError, match=r"No VOC annotations in .*set: expected \.xml files "
                                           r"in one of \['Annotations', 'annotations', 'annots', "
                                           r"'labels', 'xml'\].*found folders \['boxes', 'pics'\]"):
        register_voc_dataset(new_name(), str(root))
    with pytest.raises(DatasetError, match=r"VOC images folder not found: .*set/photos"):
        register_dataset_spec(f"{new_name()}=voc:{root}:annotations=boxes:images=photos")


# github.com/datitran/raccoon_dataset, data/train_labels.csv (commit f4d1464a): the CSV
# the TensorFlow Object Detection API tutorials build TFRecords from; the images are in
# images/, beside data/.
RACCOON_CSV = """\
filename,width,height,class,xmin,ymin,xmax,ymax
raccoon-17.jpg,259,194,raccoon,95,60,167,118
raccoon-11.jpg,660,432,raccoon,3,1,461,431
raccoon-63.jpg,600,400,raccoon,74,107,280,290
raccoon-63.jpg,600,400,raccoon,227,93,403,298
"""


@pytest.fixture
def raccoon(tmp_path: Path) -> Path:
    for file_name, size in (("raccoon-17.jpg", (259, 194)), ("raccoon-11.jpg", (660, 432)),
                            ("raccoon-63.jpg", (600, 400))):
        _image(tmp_path / "images" / file_name, size)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train_labels.csv").write_text(RACCOON_CSV)
    return tmp_path


def test_tf_object_detection_csv_with_an_image_folder(new_name, raccoon):
    spec = f"{new_name()}=csv:{raccoon / 'data' / 'train_labels.csv'}:images={raccoon / 'images'}"
    name = register_dataset_spec(spec)
    summary = validate_dataset(name)
    assert (summary.num_images, summary.num_boxes, summary.size_mismatches) == (3, 4, 0)
    assert summary.thing_classes == ["raccoon"]
    records = DatasetCatalog.get(name)
    assert [Path(r["file_name"]).name for r in records] == [
        "raccoon-17.jpg", "raccoon-11.jpg", "raccoon-63.jpg"]
    assert [a["bbox"] for a in records[2]["annotations"]] == [[74, 107, 280, 290],
                                                            [227, 93, 403, 298]]


def test_csv_header_width_height_checked_against_the_image(new_name, raccoon, caplog):
    _image(raccoon / "images" / "raccoon-17.jpg", (518, 388))  # not the 259x194 the CSV says
    name = register_csv_dataset(new_name(), str(raccoon / "data" / "train_labels.csv"),
                                image_root=str(raccoon / "images"))
    with caplog.at_level(logging.WARNING, logger="retinanet_ext.data"):
        assert validate_dataset(name).size_mismatches == 1
    assert any("259x194" in r.getMessage() and "518x388" in r.getMessage()
               for r in caplog.records)


def test_csv_header_in_any_order_with_other_columns(new_name, tmp_path):
    _image(tmp_path / "a.jpg", (50, 40))
    (tmp_path / "boxes.csv").write_text(
        "Label,X1,Y1,X2,Y2,score,Image\ncat,1,2,30,20,0.9,a.jpg\ndog,5,5,9,9,0.1,a.jpg\n")
    name = register_csv_dataset(new_name(), str(tmp_path / "boxes.csv"))
    record = DatasetCatalog.get(name)[0]
    assert [(a["category_id"], a["bbox"]) for a in record["annotations"]] == [
        (0, [1, 2, 30, 20]), (1, [5, 5, 9, 9])]


@pytest.mark.parametrize(
    "text, message",
    [
        ("filename,class,xmin,ymin\na.jpg,cat,1,2\n",
         r"boxes\.csv:1: the header .* names no column for x2, y2; expected one of x2: xmax"),
        ("filename,class,xmin,ymin,xmax,ymax\na.jpg,cat,1,2,3\n",
         r"boxes\.csv:2: expected 6 fields as in the header, found 5"),
    ],
)
def test_csv_header_errors(new_name, tmp_path, text, message):
    _image(tmp_path / "a.jpg", (50, 40))
    (tmp_path / "boxes.csv").write_text(text)
    name = register_csv_dataset(new_name(), str(tmp_path / "boxes.csv"))
    with pytest.raises(DatasetError, match=message):
        validate_dataset(name)


def test_keras_rows_whose_class_looks_like_a_column_name(new_name, tmp_path):
    """A header-less first row is data even when its class is called 'label'."""
    _image(tmp_path / "image.jpg", (50, 40))
    (tmp_path / "boxes.csv").write_text("image.jpg,1,2,30,20,label\nimage.jpg,,,,,\n")
    name = register_csv_dataset(new_name(), str(tmp_path / "boxes.csv"))
    assert validate_dataset(name).boxes_per_class == {"label": 1}
