"""``retinanet-ext show-data``: ground truth drawn where it is, before and after augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinanet_ext.visualization import class_color
from retinanet_ext_cli import main as cli_main

QUICK = "configs/retinanet_R18_FPN_quick.yaml"


@pytest.fixture
def one_box(tmp_path: Path) -> Path:
    """A 256x128 grey image with one 'cat' box (40, 30, 120, 90) and one crowd-free CSV."""
    Image.new("RGB", (256, 128), (128, 128, 128)).save(tmp_path / "a.png")
    Image.new("RGB", (256, 128), (128, 128, 128)).save(tmp_path / "b.png")
    (tmp_path / "boxes.csv").write_text("a.png,40,30,120,90,cat\nb.png,,,,,\n")
    return tmp_path / "boxes.csv"


def _edge_colours(path: Path, left: int, top: int, bottom: int) -> np.ndarray:
    drawn = np.asarray(Image.open(path).convert("RGB"))
    return drawn[top + 5:bottom - 5, left]


def test_ground_truth_is_drawn_on_the_box(new_name, one_box, tmp_path, capsys):
    name = new_name()
    status = cli_main(["show-data", "--config-file", QUICK, "--dataset", f"{name}=csv:{one_box}",
                       "--output", str(tmp_path / "gt"), "--num", "5"])
    assert status == 0
    files = sorted(p.name for p in (tmp_path / "gt").iterdir())
    assert files == [f"000_{name}_a.png", f"001_{name}_b.png"]  # 5 asked, 2 exist
    assert "2 image(s) with their ground-truth boxes written to" in capsys.readouterr().out
    # draw_boxes enlarges a small image to 512 px: x2, so the box's left edge is at x = 80
    image = tmp_path / "gt" / files[0]
    assert Image.open(image).size == (512, 256)
    assert (_edge_colours(image, 80, 60, 180) == class_color(0)).all()
    assert (_edge_colours(image, 300, 60, 180) == 128).all()  # nothing drawn elsewhere


def test_augmented_images_are_what_training_sees(new_name, one_box, tmp_path):
    """Shorter edge 64: the image becomes 128x64 and the box (20, 15, 60, 45), or, flipped,
    (68, 15, 108, 45); the model reads BGR (the config's INPUT.FORMAT) and the drawing is RGB."""
    Image.new("RGB", (256, 128), (200, 50, 10)).save(one_box.parent / "a.png")
    name = new_name()
    assert cli_main(["show-data", "--config-file", QUICK, "--dataset", f"{name}=csv:{one_box}",
                     "--output", str(tmp_path / "gt"), "--num", "2", "--augment",
                     "INPUT.MIN_SIZE_TRAIN", "(64,)"]) == 0
    image = tmp_path / "gt" / f"000_{name}_a.png"
    assert Image.open(image).size == (512, 256)  # 128x64 enlarged x4 to be legible
    flipped = (_edge_colours(image, 68 * 4, 15 * 4, 45 * 4) == class_color(0)).all()
    unflipped = (_edge_colours(image, 20 * 4, 15 * 4, 45 * 4) == class_color(0)).all()
    assert flipped != unflipped
    assert tuple(np.asarray(Image.open(image).convert("RGB"))[250, 5]) == (200, 50, 10)


def test_show_data_errors(new_name, one_box, tmp_path, capsys):
    assert cli_main(["show-data", "--config-file", QUICK, "--dataset",
                     f"{new_name()}=csv:{one_box}"]) == 2
    assert "error: --output DIR is required" in capsys.readouterr().err
    assert cli_main(["show-data", "--config-file", QUICK, "--output", str(tmp_path / "x"),
                     "--dataset", f"{new_name()}=csv:{tmp_path / 'missing.csv'}"]) == 2
    assert "CSV annotation file not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
