"""docs/use.md, "Use the model", run as written (tiny budgets appended): train, predict,
export --verify, export --int8, predict with the exported model, plot; then its Python
example."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from _docs_helpers import doc_section

REPO_ROOT = Path(__file__).resolve().parent.parent
# Appended to the training command: a few steps at small sizes (the architecture stays the
# config's, so the page's Python example loads the weights as they are).
TRAIN_TINY = ["INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", "224",
              "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
              "SOLVER.BASE_LR", "0.001", "DATALOADER.NUM_WORKERS", "0"]


def readme_section() -> str:
    return doc_section("use.md", "# Use the model")


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", readme_section(), re.S).group(1)
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def localise(text: str, datasets_root: Path, out: Path) -> str:
    return (text.replace("output/bccd", str(out))
            .replace("../shared/datasets", str(datasets_root)))


@pytest.mark.once
@pytest.mark.slow
def test_readme_use_the_model_commands(datasets_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "bccd"
    commands = readme_commands()
    assert [c.split()[:2] for c in commands] == [
        ["python", "train_net.py"], ["retinanet-ext", "predict"], ["retinanet-ext", "export"],
        ["retinanet-ext", "export"], ["retinanet-ext", "predict"], ["retinanet-ext", "plot"]]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    tool = str(Path(sys.executable).parent / "retinanet-ext")
    for command in commands:
        argv = shlex.split(localise(command, datasets_root, out))
        if argv[0] == "python":
            argv = [sys.executable, str(REPO_ROOT / argv[1]), *argv[2:], *TRAIN_TINY]
        else:
            argv = [tool, *argv[1:]]
            if "--config-file" in argv and "predict" in argv:
                argv += ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]  # a 3-step model
        result = subprocess.run(argv, capture_output=True, text=True, timeout=900,
                                cwd=REPO_ROOT, env=env)
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
        if argv[1] == "export" and "--verify" in argv:
            assert "PASSED: 3 images" in result.stdout
        elif argv[1] == "export":  # --int8
            assert "quantizing to int8 with 32 calibration images" in result.stdout
    detections = json.loads((out / "predictions" / "predictions.json").read_text())
    assert {d["category_name"] for d in detections} <= {"Platelets", "RBC", "WBC"}
    assert len({d["file_name"] for d in detections}) == 10
    assert len(list((out / "predictions").glob("BloodImage_0000*.png"))) == 10
    assert (out / "predictions" / "predictions.csv").is_file()
    assert (out / "model.onnx").is_file()
    assert (out / "model-int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size / 2
    summary = json.loads((out / "predictions_onnx" / "summary.json").read_text())
    assert len(summary["images"]) == 10 and summary["class_names"] == ["Platelets", "RBC", "WBC"]
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    # What the page says TensorBoard shows: Detectron2's events, with the losses.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    assert "total_loss" in events.Tags()["scalars"]

    python = re.search(r"```python\n(.*?)```", readme_section(), re.S).group(1)
    result = subprocess.run([sys.executable, "-c", localise(python, datasets_root, out)],
                            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
