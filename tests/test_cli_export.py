"""``retinanet-ext export``: writes the file, --verify reports parity, errors are one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnxruntime  # noqa: F401  (requirements/test.txt installs it: missing is a failure)
import pytest

from retinanet_ext_cli import main
from tests._predict_helpers import QUICK_CONFIG, TINY_OPTS, write_tiny_checkpoint


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth"))


@pytest.mark.slow
def test_export_onnx_with_verify_in_a_subprocess(weights: str, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "retinanet_ext", "export", "--format", "onnx",
         "--config-file", QUICK_CONFIG, "MODEL.WEIGHTS", weights, *TINY_OPTS,
         "--output", str(out), "--verify"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.is_file() and not Path(str(out) + ".partial").exists()
    assert "PASSED: 3 images" in result.stdout
    assert result.stdout.count(" ok") == 3


def test_torchscript_verify_on_given_images(weights: str, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from tests._predict_helpers import sample_rgb

    image = tmp_path / "x.png"
    Image.fromarray(sample_rgb(300, 500, seed=4)).save(image)
    status = main(["export", "--format", "torchscript", "--config-file", QUICK_CONFIG,
                   "MODEL.WEIGHTS", weights, *TINY_OPTS, "--output", str(tmp_path / "m.ts"),
                   "--verify", "--verify-input", str(image)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "x.png" in out and "PASSED: 1 images" in out


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx", "--opset", "13"], "opset 13"),
    (["MODEL.WEIGHTS", "{tmp}/nope.pth"], "nope.pth does not exist"),
    (["--verify", "--verify-input", "{tmp}/missing.jpg"], "missing.jpg"),
])
def test_user_errors_are_one_line(weights: str, tmp_path: Path, capsys, args, message) -> None:
    args = [a.format(tmp=tmp_path) for a in args]
    status = main(["export", "--config-file", QUICK_CONFIG, "MODEL.WEIGHTS", weights,
                   *TINY_OPTS, "--format", "torchscript", "--output", str(tmp_path / "m.ts"),
                   *args])
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err
