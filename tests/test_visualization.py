"""draw_boxes: the one drawing implementation (predict, the demo, ground truth)."""

from __future__ import annotations

import numpy as np
import pytest

from retinanet_ext.visualization import class_color, draw_boxes


def test_boxes_are_drawn_in_their_class_colour() -> None:
    image = np.full((400, 600, 3), 127, dtype=np.uint8)
    boxes = np.array([[50, 100, 250, 300], [300, 150, 550, 350]], dtype=np.float32)
    drawn = draw_boxes(image, boxes, [0, 1], ["cat", "dog"], [0.9, 0.5], min_size=0)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (image == 127).all()  # the input is not modified
    assert class_color(0) != class_color(1)
    # The left edge of each box, half-way down, has its class's colour.
    assert tuple(drawn[200, 50]) == class_color(0)
    assert tuple(drawn[250, 300]) == class_color(1)
    # A label sits above the first box: pixels of its colour there.
    label_area = drawn[60:100, 50:200].reshape(-1, 3)
    assert (label_area == class_color(0)).all(axis=1).sum() > 100
    # Outside the boxes and labels nothing changes.
    assert (drawn[380:, :40] == 127).all()


def test_small_images_are_enlarged_for_legible_labels() -> None:
    image = np.zeros((64, 96, 3), dtype=np.uint8)
    drawn = draw_boxes(image, np.array([[10, 10, 40, 40]]), [2], ["a", "b", "ring"])
    assert drawn.shape == (round(64 * 512 / 96), 512, 3)
    assert tuple(drawn[round(25 * 512 / 96), round(10 * 512 / 96)]) == class_color(2)


def test_label_line_and_text_grow_with_the_image() -> None:
    def coloured_pixels(size: int) -> int:
        image = np.zeros((size, size, 3), dtype=np.uint8)
        box = np.array([[size * 0.2, size * 0.3, size * 0.8, size * 0.9]])
        return int((draw_boxes(image, box, [0], ["object"], [0.75]) > 0).any(axis=2).sum())

    small, large = coloured_pixels(512), coloured_pixels(4096)
    assert large > 20 * small  # lines and text scale with the side (64x the area)


def test_no_boxes_and_unknown_classes() -> None:
    image = np.zeros((100, 100, 3), dtype=np.uint8)
    assert (draw_boxes(image, np.zeros((0, 4)), [], [], min_size=0) == 0).all()
    drawn = draw_boxes(image, [[10, 10, 50, 50]], [7], ["a"], min_size=0)  # "class_7"
    assert tuple(drawn[30, 10]) == class_color(7)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        draw_boxes(np.zeros((10, 10, 3), np.float32), np.zeros((0, 4)), [], [])
    with pytest.raises(ValueError, match="same length"):
        draw_boxes(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 4)), [0], ["a"])
