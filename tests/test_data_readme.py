"""docs/data.md, "Your own data": its example specs parse, its commands run as written
(the training one with a tiny budget appended)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from _docs_helpers import doc_section

from retinanet_ext.data import DATASET_FORMATS, parse_dataset_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_TINY = ["INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", "224",
              "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "224",
              "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
              "DATALOADER.NUM_WORKERS", "0",
              # no final evaluation: the RetinaNet head takes ~2 s an image on these CPUs
              "DATASETS.TEST", "()"]


def readme_section() -> str:
    return doc_section("data.md", "# Your own data")


def test_readme_example_specs_parse():
    lines = readme_section().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("| "))
    table = lines[start:end][2:]  # the section's first table: the formats
    formats = {}
    for row in table:
        examples = re.findall(r"`([A-Za-z0-9_]+=[a-z]+:[^`]+)`", row.split("|")[2])
        assert examples, row
        for spec in (e for e in examples if not e.startswith("NAME=")):  # not the grammar
            parsed = parse_dataset_spec(spec)
            formats.setdefault(parsed.format, []).append(parsed)
    assert set(formats) == set(DATASET_FORMATS)  # every format, each with an example
    assert formats["csv"][1].arguments == {"csv_file": "raccoon/data/train_labels.csv",
                                           "image_root": "raccoon/images"}
    assert formats["yolo"][1].arguments == {"path": "data/train/images",
                                            "split": "data/train/labels/classes.txt"}


@pytest.mark.once
@pytest.mark.slow
def test_readme_your_own_data_commands(datasets_root: Path, tmp_path: Path) -> None:
    block = re.search(r"```bash\n(.*?)```", readme_section(), re.S).group(1)
    commands = [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    assert [c.split()[:2] for c in commands] == [
        ["python", "train_net.py"], ["retinanet-ext", "analyze-anchors"],
        ["retinanet-ext", "show-data"], ["python", "train_net.py"]]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    tool = str(Path(sys.executable).parent / "retinanet-ext")
    outputs = []
    for command in commands:
        text = (command.replace("../shared/datasets", str(datasets_root))
                .replace("output/", f"{tmp_path}/"))
        argv = shlex.split(text)
        if argv[0] == "python":
            argv = [sys.executable, str(REPO_ROOT / argv[1]), *argv[2:]]
            if "--check-data" not in argv:
                argv += [*TRAIN_TINY, "OUTPUT_DIR", str(tmp_path / "train")]
        else:
            argv = [tool, *argv[1:]]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=900,
                                cwd=REPO_ROOT, env=env)
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
        outputs.append(result.stdout + result.stderr)
    check, anchors, shown, train = outputs
    assert "205 images" in check and "87 images" in check
    assert "box size, sqrt(area) in pixels after the test-time resize" in check
    assert "MODEL:" not in check.split("Dataset 'bccd_train'")[0]  # no config dump first
    assert "Suggested config lines" in anchors
    assert (tmp_path / "bccd_anchors.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((tmp_path / "bccd_gt").glob("*_bccd_train_BloodImage_*.png"))) == 4
    assert "Anchor coverage:" in train and "'Platelets' boxes" in train  # the start warning
