"""Per-class box sizes after the test-time resize, in the dataset summary (--check-data)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinanet_ext.data import check_data, register_csv_dataset, validated_boxes
from retinanet_ext.data.box_sizes import box_size_table, resized
from retinanet_ext.engine import load_config


@pytest.fixture
def sized_boxes(tmp_path: Path) -> Path:
    """A 400x200 and a 100x100 image; 'cat' boxes of sqrt(area) 10, 20 and 40 px, one 'dog'
    box of 30 px, a crowd-free CSV; 'bird' has no box."""
    Image.new("RGB", (400, 200)).save(tmp_path / "wide.png")
    Image.new("RGB", (100, 100)).save(tmp_path / "square.png")
    (tmp_path / "boxes.csv").write_text(
        "wide.png,0,0,10,10,cat\nwide.png,50,50,70,70,cat\nsquare.png,0,0,40,40,cat\n"
        "square.png,10,10,40,40,dog\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    return tmp_path


def test_box_size_table(new_name, sized_boxes):
    name = register_csv_dataset(new_name(), str(sized_boxes / "boxes.csv"),
                                classes_file=str(sized_boxes / "classes.txt"))
    gt = validated_boxes(name)
    assert sorted(gt.sizes.tolist()) == [10, 20, 30, 40]
    # shorter edge 100, longer at most 1000: wide.png x0.5, square.png x1
    assert resized(gt, 100, 1000).image_sizes.tolist() == [[100, 200], [100, 100]]
    table = box_size_table(gt, ["cat", "dog", "bird"], 100, 1000)
    lines = table.splitlines()
    assert "after the test-time resize (shorter edge 100, longer at most 1000)" in lines[0]
    assert lines[2].split() == ["0", "cat", "3", "5.0", "10.0", "40.0"]
    assert lines[3].split() == ["1", "dog", "1", "30.0", "30.0", "30.0"]
    assert lines[4].split() == ["2", "bird", "0", "-", "-", "-"]
    # no resize (MIN_SIZE_TEST 0): the sizes as annotated
    assert box_size_table(gt, ["cat", "dog", "bird"], 0, 0).splitlines()[2].split()[3:] == [
        "10.0", "20.0", "40.0"]
    assert np.allclose(resized(gt, 0, 0).boxes, gt.boxes)


def test_check_data_prints_sizes_with_a_config(new_name, sized_boxes):
    name = register_csv_dataset(new_name(), str(sized_boxes / "boxes.csv"))
    cfg = load_config(None, ["INPUT.MIN_SIZE_TEST", "200", "INPUT.MAX_SIZE_TEST", "400"])
    out = io.StringIO()
    check_data([name], cfg=cfg, file=out)
    text = out.getvalue()
    assert f"Dataset '{name}'" in text
    assert "(shorter edge 200, longer at most 400)" in text
    # wide.png stays 400x200; square.png becomes 200x200: its boxes double (80, 60 px)
    cat = next(line for line in text.splitlines() if line.split()[:2] == ["0", "cat"]
               and len(line.split()) == 6)
    assert cat.split()[2:] == ["3", "10.0", "20.0", "80.0"]
    out = io.StringIO()
    check_data([name], file=out)
    assert "box size" not in out.getvalue()


def test_train_net_check_data_prints_sizes(new_name, sized_boxes, capsys):
    import train_net

    name = new_name()
    status = train_net.cli([
        "--check-data", "--config-file", "configs/retinanet_R18_FPN_quick.yaml",
        "--dataset", f"{name}=csv:{sized_boxes / 'boxes.csv'}",
        "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()",
        "MODEL.RETINANET.NUM_CLASSES", "2"])
    out = capsys.readouterr().out
    assert status == 0
    assert "box size, sqrt(area) in pixels after the test-time resize (shorter edge 320" in out
    assert "MODEL:" not in out  # the summary only, no config dump
