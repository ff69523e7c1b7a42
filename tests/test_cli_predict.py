"""``retinanet-ext predict``: JSON, drawings, CSV, a corrupt image named and skipped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime  # noqa: F401  (requirements/test.txt installs it: missing is a failure)
import pytest
from PIL import Image

from retinanet_ext_cli import main
from tests._predict_helpers import (
    CLASSES,
    QUICK_CONFIG,
    TINY_OPTS,
    sample_rgb,
    write_tiny_checkpoint,
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(sample_rgb(240, 320, seed=1)).save(images / "a.png")
    Image.fromarray(sample_rgb(48, 64, seed=2)).save(images / "b_small.jpg")
    (images / "c_corrupt.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    (images / "notes.txt").write_text("not an image, not listed")
    return images


def predict(weights: str, *args: str) -> int:
    return main(["predict", "--config-file", QUICK_CONFIG, "MODEL.WEIGHTS", weights,
                 *TINY_OPTS, *args])


def test_a_folder_with_a_corrupt_image(weights, folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    status = predict(weights, "--input", str(folder), "--output", str(out), "--csv")
    captured = capsys.readouterr()
    assert status == 1  # some input was skipped; the rest is written
    assert "c_corrupt.jpg" in captured.err and "cannot read image" in captured.err
    assert "notes.txt" not in captured.err + captured.out
    detections = json.loads((out / "predictions.json").read_text())
    assert {d["file_name"] for d in detections} == {str(folder / "a.png"),
                                                    str(folder / "b_small.jpg")}
    first = detections[0]
    assert set(first) >= {"image_id", "category_id", "bbox", "score", "category_name"}
    assert first["category_name"] == CLASSES[first["category_id"]]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["file_name"] for s in summary["skipped"]] == [str(folder / "c_corrupt.jpg")]
    assert [i["num_detections"] for i in summary["images"]] == [
        sum(d["image_id"] == i for d in detections) for i in (1, 2)]
    drawn = Image.open(out / "b_small.png")
    assert drawn.size == (512, 384)  # small images are enlarged for legible labels
    assert Image.open(out / "a.png").size == (512, 384)
    rows = list(csv.reader((out / "predictions.csv").open()))
    assert rows[0] == ["file_name", "x1", "y1", "x2", "y2", "class_name", "score"]
    assert len(rows) == len(detections) + 1


def test_all_good_inputs_exit_0_and_globs_work(weights, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    status = predict(weights, "--input", str(folder / "*.png"), str(folder / "b_small.jpg"),
                     "--output", str(out), "--score-thresh", "0.5")
    assert status == 0
    detections = json.loads((out / "predictions.json").read_text())
    assert detections and all(d["score"] > 0.5 for d in detections)
    assert not (out / "predictions.csv").exists()


def test_flags_before_the_overrides_work_too(weights, folder: Path, tmp_path: Path) -> None:
    status = main(["predict", "--input", str(folder / "a.png"), "--output", str(tmp_path / "o"),
                   "--config-file", QUICK_CONFIG, "MODEL.WEIGHTS", weights, *TINY_OPTS])
    assert status == 0 and (tmp_path / "o" / "predictions.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["--input", "nowhere/*.jpg"], "no image to process"),
    (["--input", "{folder}", "MODEL.WEIGHTS", "{missing}"], "does not exist"),
    (["--input", "{folder}", "MODEL.NO_SUCH_KEY", "1"], "NO_SUCH_KEY"),
])
def test_user_errors_are_one_line(weights, folder: Path, tmp_path: Path, capsys, args,
                                  message) -> None:
    args = [a.format(folder=folder, missing=tmp_path / "missing.pth") for a in args]
    status = predict(weights, "--output", str(tmp_path / "out"), *args)
    err = capsys.readouterr().err
    assert status == 2 and message in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error:")


def test_an_exported_model_predicts_the_same(weights, folder: Path, tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    assert main(["export", "--config-file", QUICK_CONFIG, "MODEL.WEIGHTS", weights, *TINY_OPTS,
                 "--output", str(model)]) == 0
    assert predict(weights, "--input", str(folder / "a.png"), "--output",
                   str(tmp_path / "torch")) == 0
    assert main(["predict", "--model", str(model), "--input", str(folder / "a.png"),
                 "--output", str(tmp_path / "onnx")]) == 0
    torch_dets = json.loads((tmp_path / "torch" / "predictions.json").read_text())
    onnx_dets = json.loads((tmp_path / "onnx" / "predictions.json").read_text())
    assert len(torch_dets) == len(onnx_dets) > 5
    key = lambda d: (d["category_id"], round(d["score"], 3))  # noqa: E731
    for a, b in zip(sorted(torch_dets, key=key), sorted(onnx_dets, key=key), strict=True):
        assert a["category_name"] == b["category_name"]
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-2)
