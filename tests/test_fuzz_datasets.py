"""A sample of the dataset fuzzer (tools/fuzz_datasets.py): mutated annotation files of every
format and damaged images end in a clear error or a warning naming a file, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _checkpoint_helpers import REPO_ROOT, load_tool
from _docs_helpers import command_line

fuzz = load_tool("fuzz_datasets")


@pytest.fixture(autouse=True)
def quiet_retinanet_ext_logger():
    import logging

    logger = logging.getLogger("retinanet_ext")
    propagate = logger.propagate
    logger.propagate = False
    yield
    logger.propagate = propagate


def test_every_registered_format_is_fuzzed() -> None:
    from retinanet_ext.data.formats import DATASET_FORMATS

    names = {t.name for t in fuzz.registered_targets(None)}
    assert {"coco", "voc", "csv", "yolo", "labelme", "cvat", "labelstudio"} <= names
    assert names == {t.name for t in fuzz.FUZZ_TARGETS} & set(DATASET_FORMATS)


@pytest.mark.parametrize("target", fuzz.FUZZ_TARGETS, ids=lambda t: t.name)
def test_fuzz_sample_has_no_traceback(target, tmp_path: Path) -> None:
    if target not in fuzz.registered_targets(None):
        pytest.fail(f"retinanet_ext.data registers no {target.name!r} format (it ships one)")
    tally = fuzz.run_target(target, cases=25, seed=1, work=tmp_path, keep=None)
    assert sum(tally.counts.values()) == 25
    assert tally.tracebacks == []
    assert tally.unnamed == []
    assert tally.counts["error"] >= 5  # the sample does reach the loaders' error paths


def test_damaged_images(tmp_path: Path) -> None:
    outcomes = fuzz.run_images(tmp_path)
    assert not [what for what, o in outcomes.items() if o.kind == "traceback"]
    for what in ("0 bytes", "truncated JPEG", "text named .jpg", "JPEG header only"):
        assert outcomes[what].kind == "error" and outcomes[what].names_file, what
    # cut in its pixel data (the JPEG is cut in its header): read as far as it goes
    assert outcomes["truncated PNG"].kind == "warning" and outcomes["truncated PNG"].names_file
    assert "truncated" in outcomes["truncated PNG"].detail
    assert outcomes["PNG named .jpg"].kind == "warning"
    assert "read by content" in outcomes["PNG named .jpg"].detail
    assert outcomes["16-bit PNG"].kind == "warning" and "16/32-bit" in outcomes["16-bit PNG"].detail
    assert "annotation says size 64x48" in outcomes["1x1"].detail
    assert outcomes["grayscale"].kind == "accepted" and outcomes["CMYK JPEG"].kind == "accepted"


def test_voc_size_of_infinity_is_an_error_naming_the_file(tmp_path: Path) -> None:
    """Found by the fuzzer: int(float("inf")) raised OverflowError."""
    base = fuzz.build_voc(tmp_path / "voc")
    xml = base.files[0]
    xml.write_text(xml.read_text().replace("<height>48</height>", "<height>inf</height>"))
    outcome = fuzz.check_case("voc_inf=voc:" + ":".join(base.fields), base.files)
    assert outcome.kind == "error" and xml.name in outcome.detail


@pytest.mark.once
@pytest.mark.slow
@pytest.mark.parametrize("target", fuzz.FUZZ_TARGETS, ids=lambda t: t.name)
def test_train_net_check_data_on_a_mutated_file(target, tmp_path: Path) -> None:
    if target not in fuzz.registered_targets(None):
        pytest.fail(f"retinanet_ext.data registers no {target.name!r} format (it ships one)")
    base = target.build(tmp_path / target.name)
    victim = base.files[0]
    victim.write_bytes(victim.read_bytes()[:40] + b"\x00garbage\n")  # truncated + binary
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), "--check-data",
         "--config-file", str(REPO_ROOT / "configs" / "retinanet_R18_FPN_quick.yaml"),
         "--dataset", f"fuzzed={target.name}:" + ":".join(base.fields),
         "DATASETS.TRAIN", "('fuzzed',)", "DATASETS.TEST", "()"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1, errors  # one error (it may list the bad rows below it)
    assert victim.name in result.stderr[result.stderr.index(errors[0]):], result.stderr[-3000:]


@pytest.mark.once
@pytest.mark.slow
def test_readme_fuzz_command_runs(tmp_path: Path) -> None:
    """docs/training.md's command as written, with a tiny budget appended."""
    line = command_line("training.md", "python tools/fuzz_datasets.py")
    command = line.split("#")[0].split()[1:]
    result = subprocess.run([sys.executable, *command, "--cases", "3"], capture_output=True,
                            text=True, timeout=600, cwd=REPO_ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    for name in ("coco", "voc", "csv"):
        assert f"| {name} | 3 |" in result.stdout
    assert "| 0 bytes | error | True |" in result.stdout
