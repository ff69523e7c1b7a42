"""The format table: specs, help texts and the checks at start all read it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from retinanet_ext.data import (
    DATASET_FORMATS,
    DatasetError,
    DatasetFormat,
    SpecField,
    dataset_paths,
    parse_dataset_spec,
    register_coco_dataset,
    register_dataset_spec,
    register_format,
    spec_grammar,
    validate_dataset,
)
from retinanet_ext.data.catalog import register_validated
from retinanet_ext.data.formats import unregister_format
from retinanet_ext.engine import MissingDatasetError, check_datasets_available


def _register_boxes_json(name: str, root: str, scale: str = "1") -> str:
    """A toy format: ROOT/boxes.json maps image file names to [x1, y1, x2, y2] lists."""
    root = str(Path(root).resolve())

    def load_raw():
        boxes = json.loads((Path(root) / "boxes.json").read_text())
        records = [
            {"file_name": str(Path(root) / file_name), "image_id": i,
             "annotations": [{"bbox": [float(v) * float(scale) for v in box],
                              "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
                             for box in image_boxes]}
            for i, (file_name, image_boxes) in enumerate(sorted(boxes.items()))
        ]
        return records, ["thing"], {}

    register_validated(name, load_raw, key=("boxes_json", root, scale),
                       source=f"boxes_json: {root}",
                       metadata={"boxes_file": str(Path(root) / "boxes.json")},
                       data_format="boxes_json")
    return name


@pytest.fixture
def boxes_json_format():
    entry = register_format(DatasetFormat(
        name="boxes_json",
        register=_register_boxes_json,
        fields=(SpecField("root", "ROOT", required=True),
                SpecField("scale", "FACTOR", positional=False)),
        example="toy=boxes_json:data/toy",
        description="a JSON of boxes per image",
        path_keys=("boxes_file",),
    ))
    yield entry
    unregister_format("boxes_json")


def test_a_format_registered_here_is_usable_from_dataset(boxes_json_format, new_name, tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    (tmp_path / "boxes.json").write_text(json.dumps({"a.png": [[2, 2, 10, 12]]}))
    name = new_name("toy")
    assert register_dataset_spec(f"{name}=boxes_json:{tmp_path}:scale=2") == name
    assert DatasetCatalog.get(name)[0]["annotations"][0]["bbox"] == [4, 4, 20, 24]
    assert validate_dataset(name).num_boxes == 1
    # the grammar and train_net.py's --help list it, from the same table
    assert "NAME=boxes_json:ROOT[:scale=FACTOR]" in spec_grammar()
    import train_net

    help_text = " ".join(train_net.build_parser().format_help().split())
    assert "toy=boxes_json:data/toy" in help_text
    # the checks at start look for the files its entry names
    assert dataset_paths(name) == [("boxes_file", str(tmp_path.resolve() / "boxes.json"))]
    check_datasets_available([name])
    (tmp_path / "boxes.json").rename(tmp_path / "moved.json")
    with pytest.raises(MissingDatasetError, match=f"'{name}': its boxes_file .* does not exist"):
        check_datasets_available([name])


def test_paths_checked_per_format(new_name, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "a.json").write_text('{"images": [], "annotations": [], "categories": []}')
    name = register_coco_dataset(new_name("coco"), str(tmp_path / "a.json"),
                                 str(tmp_path / "images"))
    assert MetadataCatalog.get(name).dataset_format == "coco"
    assert [what for what, _ in dataset_paths(name)] == ["json_file", "image_root"]


def test_key_value_fields():
    spec = parse_dataset_spec("d=voc:/data/set:train:annotations=annots:images=imgs")
    assert spec.arguments == {"root": "/data/set", "split": "train",
                              "annotations_dir": "annots", "images_dir": "imgs"}
    spec = parse_dataset_spec("d=csv:a.csv:images=/x/pics")
    assert spec.arguments == {"csv_file": "a.csv", "image_root": "/x/pics"}
    # a positional field may be given by its key too
    assert parse_dataset_spec("d=voc:/r:split=val").arguments == {"root": "/r", "split": "val"}
    # a random split has '=' but is no key=value field
    spec = parse_dataset_spec("d=voc:/r:train@train=0.8,val=0.2")
    assert spec.arguments["split"] == "train@train=0.8,val=0.2"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("d=voc:/r:imgs=x", "format 'voc' has no field 'imgs'.*'./imgs=x'"),
        ("d=voc:/r:images=x:train", "positional field 'train' after a key=value field"),
        ("d=voc:/r:images=x:images=y", "field 'images' is given twice"),
        ("d=voc:/r:root=/s", "field 'root' is given by position and as key=value"),
        ("d=csv:images=x", "takes CSV_FILE\\[:CLASSES_FILE\\], found 0 field"),
        ("d=coco:a.json:b:c", "takes JSON_FILE:IMAGE_ROOT, found 3 field.*"),
        ("d=csv:a.csv:b.txt:c", "optional key=value fields: images=DIR"),
    ],
)
def test_bad_key_value_fields(spec, message):
    with pytest.raises(DatasetError, match=rf"Malformed dataset spec .*{message}.*Expected NAME="):
        parse_dataset_spec(spec)


def test_format_table_refuses_inconsistent_entries():
    def register(name, **_):
        return name

    with pytest.raises(ValueError, match="already registered"):
        register_format(DatasetFormat("voc", register, (), "", ""))
    with pytest.raises(ValueError, match="required field 'b' follows an optional"):
        register_format(DatasetFormat(
            "broken", register, (SpecField("a", "A"), SpecField("b", "B", required=True)), "", ""))
    assert "broken" not in DATASET_FORMATS


def test_unknown_format_at_registration_is_a_clear_error(new_name):
    with pytest.raises(DatasetError, match="Unknown dataset format 'nope'"):
        register_validated(new_name(), lambda: ([], [], {}), key=(), source="",
                           metadata={}, data_format="nope")
