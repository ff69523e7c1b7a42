"""int8 post-training quantization of an exported ONNX model (``retinanet-ext export --int8``):
an int8 graph that still detects like the float32 one, its metadata, and refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime  # noqa: F401  (requirements/test.txt installs it: missing is a failure)
import pytest
from PIL import Image

from retinanet_ext import Predictor
from retinanet_ext.export import ExportedModel, ImageReadError, export_model
from retinanet_ext.export.quantize import calibration_files, quantize_onnx
from retinanet_ext.export.runtime import METADATA_KEY
from retinanet_ext.export.verify import sample_images
from retinanet_ext_cli import main
from tests._predict_helpers import QUICK_CONFIG, TINY_OPTS, write_tiny_checkpoint


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth"))


@pytest.fixture(scope="module")
def float32_onnx(weights: str, tmp_path_factory) -> str:
    predictor = Predictor(QUICK_CONFIG, weights, opts=TINY_OPTS)
    return export_model(predictor, tmp_path_factory.mktemp("fp32") / "tiny.onnx", "onnx")


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calib")
    for index, image in enumerate(sample_images([(200, 300), (240, 320), (300, 200)] * 2,
                                                seed=3)):
        Image.fromarray(image).save(folder / f"img{index}.png")
    (folder / "notes.txt").write_text("not an image: skipped")
    return folder


@pytest.fixture(scope="module")
def int8_onnx(float32_onnx: str, calibration_dir: Path, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("int8") / "tiny-int8.onnx"
    return quantize_onnx(float32_onnx, out, calibration_files([calibration_dir], 32))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area = lambda boxes: (boxes[:, 2:] - boxes[:, :2]).prod(axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def test_int8_graph_detects_like_float32(float32_onnx: str, int8_onnx: str) -> None:
    graph = onnx.load(int8_onnx).graph
    quantized_convs = {node.input[0] for node in graph.node if node.op_type == "Conv"}
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert len(convs) > 20 and quantized_convs <= dequantized  # every conv reads int8 data
    assert os.path.getsize(int8_onnx) < 0.4 * os.path.getsize(float32_onnx)  # int8 weights

    reference, quantized = ExportedModel(float32_onnx), ExportedModel(int8_onnx)
    for image in sample_images([(260, 380), (400, 300)], seed=11):  # not calibration images
        ref, res = reference(image, rgb=True), quantized(image, rgb=True)
        assert len(ref) >= 10 and abs(len(res) - len(ref)) <= 0.25 * len(ref)
        # each confident float32 detection is found by int8: same class, IoU >= 0.8
        confident = ref.scores >= 0.5
        iou = _iou(ref.boxes[confident], res.boxes)
        same_class = ref.class_ids[confident][:, None] == res.class_ids[None, :]
        assert confident.sum() >= 3 and ((iou >= 0.8) & same_class).any(axis=1).all()


def test_int8_file_carries_the_metadata_and_what_was_done(float32_onnx, int8_onnx) -> None:
    meta = json.loads({p.key: p.value for p in onnx.load(int8_onnx).metadata_props}[METADATA_KEY])
    original = ExportedModel(float32_onnx).metadata
    assert {k: v for k, v in meta.items() if k != "quantization"} == original
    assert meta["quantization"]["type"] == "int8"
    assert meta["quantization"]["calibration_images"] == 6
    with pytest.raises(ValueError, match="already quantized"):
        quantize_onnx(int8_onnx, Path(int8_onnx).with_name("again.onnx"), sample_images())


def test_calibration_files_spread_and_refuse(calibration_dir: Path, tmp_path: Path) -> None:
    every = calibration_files([calibration_dir], 100)
    assert [Path(p).name for p in every] == [f"img{i}.png" for i in range(6)]
    spread = calibration_files([calibration_dir], 3)  # first, middle, last
    assert [Path(p).name for p in spread] == ["img0.png", "img2.png", "img5.png"]
    with pytest.raises(ValueError, match="nope"):
        calibration_files([tmp_path / "nope"], 4)
    with pytest.raises(ValueError, match="no calibration images"):
        calibration_files([tmp_path], 4)


def test_a_bad_calibration_image_is_named_and_nothing_is_written(float32_onnx: str,
                                                                 tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "int8.onnx"
    out.write_bytes(b"an earlier model")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        quantize_onnx(float32_onnx, out, [str(broken)])
    assert out.read_bytes() == b"an earlier model"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jpg", "int8.onnx"]


def test_export_command_writes_int8(weights: str, calibration_dir: Path, tmp_path: Path,
                                    capsys) -> None:
    out = tmp_path / "model-int8.onnx"
    status = main(["export", "--config-file", QUICK_CONFIG, "MODEL.WEIGHTS", weights,
                   *TINY_OPTS, "--output", str(out), "--int8", "--calibration-images",
                   str(calibration_dir), "--calibration-count", "4"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "4 calibration images" in printed and f"exported onnx int8 to {out}" in printed
    assert ExportedModel(str(out)).metadata["quantization"]["calibration_images"] == 4


@pytest.mark.parametrize("args, message", [
    (["--int8"], "--int8 needs --calibration-images"),
    (["--int8", "--format", "torchscript", "--calibration-images", "{calib}"], "ONNX models"),
    (["--int8", "--verify", "--calibration-images", "{calib}"], "float32 parity"),
    (["--calibration-images", "{calib}"], "is for --int8"),
    (["--int8", "--calibration-images", "{tmp}/none"], "none: no such file"),
])
def test_int8_user_errors_are_one_line(weights: str, calibration_dir: Path, tmp_path: Path,
                                       capsys, args, message) -> None:
    args = [a.format(tmp=tmp_path, calib=calibration_dir) for a in args]
    status = main(["export", "--config-file", QUICK_CONFIG, "MODEL.WEIGHTS", weights,
                   *TINY_OPTS, "--output", str(tmp_path / "m.onnx"), *args])
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()
