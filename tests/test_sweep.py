"""``retinanet-ext sweep``: grid parsing, checks before any run, resumption and the tables;
with a stand-in for train_net.py (fast) and with the real one on a tiny grid (slow)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

import retinanet_ext  # noqa: F401  (registers the components)
from retinanet_ext.data import unregister_dataset
from retinanet_ext.engine import load_config
from retinanet_ext_cli import CommandError, main, sweep
from tests._docs_helpers import block_after, block_commands, doc_section
from tests._tiny_training import QUICK_CONFIG, REPO_ROOT, TINY_OPTS, synthetic_dataset

GAMMA = "MODEL.RETINANET.FOCAL_LOSS_GAMMA"


def test_grid_values_split_outside_brackets() -> None:
    assert sweep.split_values("0,0.5,2") == ["0", "0.5", "2"]
    assert sweep.split_values("(320,),(384, 416)") == ["(320,)", "(384, 416)"]
    assert sweep.split_values("[[16], [32]],'a,b'") == ["[[16], [32]]", "'a,b'"]
    axis = sweep.parse_grid("INPUT.MIN_SIZE_TRAIN=(320,),(384,)")
    assert axis == sweep.GridAxis("INPUT.MIN_SIZE_TRAIN", ("(320,)", "(384,)"))
    for bad, message in (("gamma=1,2", "expected KEY=V1,V2"), (f"{GAMMA}", "expected KEY"),
                         (f"{GAMMA}=1,,2", "an empty value"), (f"{GAMMA}=1,1", "repeated"),
                         ("OUTPUT_DIR=a,b", "sets OUTPUT_DIR itself"),
                         ("SEED=1,2", "sets SEED itself")):
        with pytest.raises(CommandError, match=message):
            sweep.parse_grid(bad)


def test_plan_folders_and_order() -> None:
    axes = [sweep.GridAxis(GAMMA, ("0.0", "2.0")), sweep.GridAxis("MODEL.FPN.NORM", ("GN", ""))]
    runs = sweep.plan_runs(axes, [0, 1])
    assert [(dict(r.combination)[GAMMA], r.seed) for r in runs] == [
        ("0.0", 0), ("0.0", 0), ("2.0", 0), ("2.0", 0), ("0.0", 1), ("0.0", 1), ("2.0", 1),
        ("2.0", 1)]
    assert len({r.folder for r in runs}) == 8
    assert runs[0].folder.startswith("runs/FOCAL_LOSS_GAMMA=0.0__NORM=GN__")
    assert runs[0].folder.endswith("/seed0")
    # Values that slug alike stay apart; the same values give the same folder again.
    size = "INPUT.MIN_SIZE_TRAIN"
    assert (sweep.combination_folder([(size, "(320,)")])
            != sweep.combination_folder([(size, "[320]")]))
    assert sweep.plan_runs(axes, [0, 1]) == runs
    assert sweep.plan_runs([], [3])[0].folder.startswith("runs/base-")


def test_integers_become_floats_for_float_keys() -> None:
    cfg = load_config(QUICK_CONFIG)
    axes = [sweep.GridAxis(GAMMA, ("0", "0.5", "2")),
            sweep.GridAxis("SOLVER.MAX_ITER", ("10", "20"))]
    coerced = sweep.coerce_to_defaults(cfg, axes)
    assert coerced[0].values == ("0.0", "0.5", "2.0")
    assert coerced[1].values == ("10", "20")


def test_variants_parse_and_plan() -> None:
    variant = sweep.parse_variant("no GN: MODEL.FPN.NORM '' MODEL.RETINANET.NORM \"\"")
    assert variant == sweep.Variant("no GN", (("MODEL.FPN.NORM", ""),
                                              ("MODEL.RETINANET.NORM", "")))
    assert sweep.parse_variant(" sizes :INPUT.MIN_SIZE_TRAIN '(320, 384)'").overrides == (
        ("INPUT.MIN_SIZE_TRAIN", "(320, 384)"),)
    for bad, message in (("MODEL.FPN.NORM GN", "expected NAME: KEY VALUE"),
                         ("x: MODEL.FPN.NORM", "expected NAME"), (": MODEL.FPN.NORM GN", "NAME"),
                         ("x: fpn.norm GN", "'fpn.norm' is not a config key"),
                         ("x: SEED 3", "sets SEED itself"), ("base: SEED 3", "base config"),
                         ("x: MODEL.FPN.NORM GN MODEL.FPN.NORM BN", "a key is given twice"),
                         ("x: MODEL.FPN.NORM 'GN", "No closing quotation")):
        with pytest.raises(CommandError, match=message):
            sweep.parse_variant(bad)
    runs = sweep.plan_variant_runs([variant, sweep.parse_variant("g0: " + GAMMA + " 0.0")], [0, 1])
    assert [(r.variant, r.seed) for r in runs] == [
        ("base", 0), ("no GN", 0), ("g0", 0), ("base", 1), ("no GN", 1), ("g0", 1)]
    assert runs[0].combination == () and runs[1].overrides == [
        "MODEL.FPN.NORM", "", "MODEL.RETINANET.NORM", ""]
    assert runs[1].folder.startswith("runs/no_GN__") and runs[1].folder.endswith("/seed0")
    assert len({r.folder for r in runs}) == 6
    cfg = load_config(QUICK_CONFIG)
    assert sweep.coerce_variants(cfg, [sweep.parse_variant(f"g: {GAMMA} 1")])[0].overrides == (
        (GAMMA, "1.0"),)


def test_final_metrics_and_train_time(tmp_path: Path) -> None:
    entries = [{"iteration": 4, "total_loss": 1.0},
               {"iteration": 4, "bbox/AP": 1.0, "bbox/AP50": 2.0},  # a periodic evaluation
               {"iteration": 9, "bbox/AP": 10.5, "bbox/AP-cell": 12.0, "bbox/APl": float("nan")}]
    text = "\n".join(json.dumps(e) for e in entries) + '\n{"iteration": 9, "bbox/A'
    (tmp_path / "metrics.json").write_text(text)
    metrics = sweep.final_metrics(tmp_path, max_iter=10)
    assert metrics["AP"] == 10.5 and metrics["AP-cell"] == 12.0
    assert sweep.final_metrics(tmp_path, max_iter=20) is None  # stopped before the end
    assert sweep.final_metrics(tmp_path / "missing", max_iter=10) is None
    log = ("Total training time: 0:01:05 (0:00:05 on hooks)\n...\n"
           "Total training time: 1 day, 0:00:10 (0:00:10 on hooks)\n")
    assert sweep.train_seconds(log) == 60 + 86400


FAKE_TRAIN_NET = textwrap.dedent('''
    """Stands in for train_net.py: records its arguments, writes Detectron2-like outputs."""
    import json, os, sys
    args = sys.argv[1:]
    out = args[args.index("OUTPUT_DIR") + 1]
    max_iter = int(args[args.index("SOLVER.MAX_ITER") + 1])
    seed = int(args[args.index("SEED") + 1])
    key = "MODEL.RETINANET.FOCAL_LOSS_GAMMA"  # the last one given counts, as in yacs
    gamma = float(args[len(args) - 1 - args[::-1].index(key) + 1]) if key in args else 0.5
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "invocations.txt"), "a") as f:
        f.write(json.dumps(args) + "\\n")
    os.makedirs(out, exist_ok=True)
    print(f" eta: 0:00:01  iter: {max_iter - 1}  total_loss: 0.5  time: 0.1")
    print("Total training time: 0:00:42 (0:00:02 on hooks)")
    if os.path.exists(os.path.join(here, "FAIL")):
        sys.exit(1)
    open(os.path.join(out, "last_checkpoint"), "w").write("model_final.pth")
    metrics = {"iteration": max_iter, "bbox/AP": 10 * gamma + seed, "bbox/AP50": 50.0,
               "bbox/AP75": 5.0, "bbox/APs": 1.0, "bbox/APm": 2.0, "bbox/APl": float("nan"),
               "bbox/AP-circle": 7.0, "bbox/AP50-circle": 70.0}
    with open(os.path.join(out, "metrics.json"), "a") as f:
        f.write(json.dumps(metrics) + "\\n")
''')


@pytest.fixture
def fake_sweep(tmp_path: Path, new_name, monkeypatch):
    """``main(["sweep", ...])`` on a real config and dataset with the stand-in train_net."""
    fake = tmp_path / "bin" / "train_net.py"
    fake.parent.mkdir()
    fake.write_text(FAKE_TRAIN_NET)
    monkeypatch.setattr(sweep, "TRAIN_NET", fake)
    info = synthetic_dataset(tmp_path / "data", num_train=2, num_val=2)
    names = {split: new_name(split) for split in ("train", "val")}
    specs = []
    for split, name in names.items():
        paths = info["splits"][split]
        specs += ["--dataset", f"{name}=coco:{paths['json_file']}:{paths['image_root']}"]
    common = ["--config-file", QUICK_CONFIG, *specs, "--output", str(tmp_path / "sweep")]
    opts = [*TINY_OPTS, "DATASETS.TRAIN", f"('{names['train']}',)",
            "DATASETS.TEST", f"('{names['val']}',)", "SOLVER.MAX_ITER", "3"]

    def run(*args: str, extra_opts: tuple[str, ...] = ()) -> int:
        return main(["sweep", *common, *args, *opts, *extra_opts])

    def invocations() -> list[list[str]]:
        path = fake.parent / "invocations.txt"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    return run, invocations, tmp_path / "sweep", fake.parent


def test_sweep_runs_resumes_and_tabulates(fake_sweep, capsys) -> None:
    run, invocations, output, fake_dir = fake_sweep
    assert run("--grid", f"{GAMMA}=0,2", "--seeds", "0", "1") == 0
    calls = invocations()
    assert len(calls) == 4 and not any("--resume" in c for c in calls)
    assert [c[c.index(GAMMA) + 1] for c in calls] == ["0.0", "2.0", "0.0", "2.0"]
    assert [c[c.index("SEED") + 1] for c in calls] == ["0", "0", "1", "1"]
    printed = capsys.readouterr().out
    assert "sweep: 4 runs (2 combinations x 2 seeds)" in printed
    assert "[4/4] MODEL.RETINANET.FOCAL_LOSS_GAMMA=2.0, seed 1: finished" in printed

    with open(output / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r[GAMMA], r["seed"], float(r["AP"])) for r in rows] == [
        ("0.0", "0", 0.0), ("2.0", "0", 20.0), ("0.0", "1", 1.0), ("2.0", "1", 21.0)]
    assert {r["status"] for r in rows} == {"done"} and rows[0]["AP-circle"] == "7.0"
    assert float(rows[0]["train_s"]) == 40.0 and rows[0]["iterations"] == "3"
    table = (output / "results.md").read_text()
    assert "| 2.0 | 2 | 20.5 ± 0.7 | 50.0 ± 0.0 |" in table  # mean ± sd over the seeds
    assert (output / "results.png").read_bytes()[:4] == b"\x89PNG"

    # Again: nothing is retrained.
    assert run("--grid", f"{GAMMA}=0,2", "--seeds", "0", "1") == 0
    assert len(invocations()) == 4
    assert capsys.readouterr().out.count("done before") == 4

    # An interrupted run (checkpoint, no recorded result) is resumed; the others are kept.
    state_path = output / json.loads(json.dumps(rows[1]["run"])) / sweep.RUN_STATE
    state = json.loads(state_path.read_text())
    del state["result"]
    state_path.write_text(json.dumps(state))
    assert run("--grid", f"{GAMMA}=0,2", "--seeds", "0", "1") == 0
    calls = invocations()
    assert len(calls) == 5 and "--resume" in calls[-1]
    assert calls[-1][calls[-1].index("OUTPUT_DIR") + 1] == str(output / rows[1]["run"])


def test_sweep_refuses_other_settings_and_reports_failures(fake_sweep, capsys) -> None:
    run, invocations, output, fake_dir = fake_sweep
    assert run("--grid", f"{GAMMA}=2") == 0
    assert "sweep: 1 run (1 combination x 1 seed)" in capsys.readouterr().out
    assert run("--grid", f"{GAMMA}=2", extra_opts=("SOLVER.BASE_LR", "0.002")) == 2
    assert "made with other settings (overrides differ)" in capsys.readouterr().err
    assert len(invocations()) == 1

    (fake_dir / "FAIL").touch()
    assert run("--grid", f"{GAMMA}=0") == 1
    printed = capsys.readouterr().out
    assert "FAILED (exit status 1)" in printed and "Total training time" in printed
    with open(output / "results.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["failed"]


def test_run_identity_is_the_settings_not_the_checkout(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("SOLVER:\n  BASE_LR: 0.01\n")
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "base.yaml"\nSOLVER:\n  MAX_ITER: 10\n')
    digest = sweep.config_digest(child)
    child.write_text('# a comment\n_BASE_: "base.yaml"\nSOLVER: {MAX_ITER: 10}  # layout\n')
    assert sweep.config_digest(child) == digest  # comments and layout do not count
    base.write_text("SOLVER:\n  BASE_LR: 0.02\n")
    assert sweep.config_digest(child) != digest  # a change in the base file does
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for path in (base, child):
        (moved / path.name).write_text(path.read_text())
    assert sweep.config_digest(moved / "child.yaml") == sweep.config_digest(child)

    data = tmp_path / "checkout" / "data"
    data.mkdir(parents=True)
    spec = f"d=coco:{data / 'a.json'}:{data}"
    (data / "a.json").write_text("{}")
    portable = sweep.portable_dataset_spec(spec, tmp_path / "checkout" / "out" / "sweep")
    assert portable == "d=coco:image_root=../../data:json_file=../../data/a.json"
    absent = "d=coco:/nowhere/a.json:/nowhere"  # not on disk: kept as written
    assert sweep.portable_dataset_spec(absent, tmp_path) == (
        "d=coco:image_root=/nowhere:json_file=/nowhere/a.json")


def test_sweep_resumes_in_another_checkout(fake_sweep, capsys) -> None:
    """Results (and the data beside them) copied elsewhere are the same runs there; runs
    recorded with the earlier identity (the file's bytes, absolute paths) still match."""
    run, invocations, output, _ = fake_sweep
    assert run("--grid", f"{GAMMA}=0,2") == 0 and len(invocations()) == 2
    # train_net's arguments: --config-file C, two --dataset specs, the overrides, the grid's.
    command = json.loads((output.parent / "bin" / "invocations.txt").read_text()
                         .splitlines()[0])
    assert command[2] == "--dataset" and command[4] == "--dataset"
    specs = [command[3], command[5]]
    opts = command[6:command.index(GAMMA)]
    copy = output.parent / "copy"
    for folder in ("sweep", "data"):
        shutil.copytree(output.parent / folder, copy / folder)
    moved = [spec.replace(str(output.parent), str(copy)) for spec in specs]
    assert moved != specs
    argv = ["sweep", "--config-file", QUICK_CONFIG,
            *[x for spec in moved for x in ("--dataset", spec)],
            "--output", str(copy / "sweep"), "--grid", f"{GAMMA}=0,2", *opts]
    for spec in specs:  # a new process in the other checkout: the names are free
        unregister_dataset(spec.partition("=")[0])
    capsys.readouterr()
    assert main(argv) == 0
    assert len(invocations()) == 2 and capsys.readouterr().out.count("done before") == 2
    for spec in specs:
        unregister_dataset(spec.partition("=")[0])

    state_path = next(output.glob("runs/*/seed0/" + sweep.RUN_STATE))
    state = json.loads(state_path.read_text())
    assert "config_digest" in state["identity"]
    run_args = argparse.Namespace(config_file=QUICK_CONFIG, opts=state["identity"]["overrides"],
                                  dataset=specs)
    legacy = sweep._legacy_identity(run_args, sweep.Run(
        tuple(state["identity"]["grid"].items()), 0, str(state_path.parent)))
    state["identity"] = legacy
    state_path.write_text(json.dumps(state))
    assert run("--grid", f"{GAMMA}=0,2") == 0 and len(invocations()) == 2
    state["identity"]["config_sha256"] = "0" * 64  # the file changed since
    state_path.write_text(json.dumps(state))
    assert run("--grid", f"{GAMMA}=0,2") == 2
    assert "(config_sha256 differ)" in capsys.readouterr().err


def test_sweep_checks_everything_before_running(fake_sweep, capsys) -> None:
    run, invocations, output, _ = fake_sweep
    cases = [
        (("--grid", "MODEL.RETINANET.GAMMA=0,2"), "--grid MODEL.RETINANET.GAMMA=0: "),
        (("--grid", f"{GAMMA}=0,-1"), f"{GAMMA} must be in [0.0, inf], found -1.0"),
        (("--grid", f"{GAMMA}=0", "--grid", f"{GAMMA}=2"), "is given twice"),
        (("--grid", "SOLVER.MAX_ITER=2,4"), "both in --grid and in the overrides"),
        (("--grid", f"{GAMMA}=0", "--seeds", "0", "x"), "--seeds takes integers"),
    ]
    for args, message in cases:
        assert run(*args) == 2, args
        assert message in capsys.readouterr().err, args
    assert run("--grid", f"{GAMMA}=0", extra_opts=("DATASETS.TEST", "('nope',)")) == 2
    assert "dataset 'nope' is not registered" in capsys.readouterr().err
    assert run("--grid", f"{GAMMA}=0", extra_opts=("MODEL.RETINANET.NUM_CLASSES", "3")) == 2
    assert "NUM_CLASSES" in capsys.readouterr().err
    assert run("--grid", f"{GAMMA}=0", extra_opts=("SEED", "3")) == 2
    assert "SEED is set by the sweep" in capsys.readouterr().err
    assert invocations() == [] and not output.exists()
    assert run("--grid", f"{GAMMA}=0,1", "--dry-run") == 0
    assert invocations() == [] and "[2/2]" in capsys.readouterr().out


def test_sweep_variants_one_change_at_a_time(fake_sweep, capsys) -> None:
    run, invocations, output, _ = fake_sweep
    variants = ("--variant", f"gamma 0: {GAMMA} 0", "--variant", "no GN: MODEL.FPN.NORM ''")
    assert run(*variants, "--seeds", "0", "1") == 0
    calls = invocations()
    assert len(calls) == 6 and [GAMMA in c for c in calls[:3]] == [False, True, False]
    assert calls[1][calls[1].index(GAMMA) + 1] == "0.0"  # coerced to the key's float type
    assert calls[2][-6:-4] == ["MODEL.FPN.NORM", ""]  # before SEED and OUTPUT_DIR
    printed = capsys.readouterr().out
    assert "sweep: 6 runs (the base config and 2 variants x 2 seeds)" in printed
    assert "[2/6] gamma 0, seed 0: finished" in printed
    with open(output / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], r["seed"], float(r["AP"])) for r in rows] == [
        ("base", "0", 5.0), ("gamma 0", "0", 0.0), ("no GN", "0", 5.0),
        ("base", "1", 6.0), ("gamma 0", "1", 1.0), ("no GN", "1", 6.0)]
    table = (output / "results.md").read_text()
    assert f"- gamma 0: `{GAMMA} 0.0`" in table and "- no GN: `MODEL.FPN.NORM ''`" in table
    assert "| variant | seeds | AP |" in table and "| gamma 0 | 2 | 0.5 ± 0.7 |" in table
    assert run(*variants, "--seeds", "0", "1") == 0 and len(invocations()) == 6  # resumed

    cases = [(("--variant", "x: MODEL.FPN.NORMS GN"), "--variant x: "),
             (("--variant", f"x: {GAMMA} 1", "--variant", f"x: {GAMMA} 2"), "'x' is given twice"),
             (("--variant", f"x: {GAMMA} 1", "--grid", f"{GAMMA}=1,2"), "do not mix")]
    for args, message in cases:
        assert run(*args) == 2, args
        assert message in capsys.readouterr().err, args
    assert len(invocations()) == 6


def readme_commands(heading: str, page: str = "recipe.md") -> list[str]:
    """The bash block of the docs page's section ``heading``, one command a line."""
    return block_commands(doc_section(page, heading))


def localise(command: str, datasets_root: Path, tmp_path: Path) -> str:
    """The documented paths made local: the shared data sets, ``output/`` under ``tmp_path``, and
    BCCD's val split cut to its first four images (an ids file: evaluation in seconds)."""
    ids = tmp_path / "bccd_val4.txt"
    if not ids.exists():
        split = datasets_root / "bccd" / "BCCD" / "ImageSets" / "Main" / "val.txt"
        ids.write_text("\n".join(split.read_text().split()[:4]) + "\n")
    return (command.replace("BCCD:val", f"BCCD:{ids}")
            .replace("../shared/datasets", str(datasets_root))
            .replace("output/", f"{tmp_path}/output/"))


def _cli(command: str, datasets_root: Path, tmp_path: Path, *extra: str):
    """A documented ``retinanet-ext ...`` command (:func:`localise`d, ``extra`` appended), run
    as ``python -m retinanet_ext`` in a subprocess from the repository root."""
    localised = localise(command, datasets_root, tmp_path)
    argv = [sys.executable, "-m", "retinanet_ext", *shlex.split(localised)[1:], *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT,
                          env=env)


# Appended to the documented sweep: two iterations at 64 px (the plumbing, not the accuracy).
SWEEP_TINY = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
              "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
              "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()",
              "SOLVER.WARMUP_ITERS", "1", "SOLVER.BASE_LR", "0.001", "DATALOADER.NUM_WORKERS", "0"]


@pytest.mark.once
@pytest.mark.slow
def test_readme_sweep_and_plot_focal_commands(datasets_root: Path, tmp_path: Path) -> None:
    commands = readme_commands("## Ablation sweeps and the focal-loss figures")
    assert [c.split()[:2] for c in commands] == [["retinanet-ext", "sweep"],
                                                 *[["retinanet-ext", "plot-focal"]] * 2]
    output = tmp_path / "output" / "sweep_gamma"
    swept = _cli(commands[0], datasets_root, tmp_path, *SWEEP_TINY)
    assert swept.returncode == 0, (swept.stdout[-3000:], swept.stderr[-3000:])
    assert "sweep: 4 runs (2 combinations x 2 seeds)" in swept.stdout
    with open(output / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r[GAMMA], r["seed"]) for r in rows] == [("0.0", "0"), ("2.0", "0"), ("0.0", "1"),
                                                     ("2.0", "1")]
    for row in rows:
        assert row["status"] == "done" and row["iterations"] == "2"
        assert 0.0 <= float(row["AP"]) <= 100.0 and float(row["train_s"]) >= 0
        assert set(row) >= {"AP-Platelets", "AP-RBC", "AP-WBC", "APs", "APm", "APl"}
    model = output / rows[0]["run"] / "model_final.pth"
    written = model.stat().st_mtime_ns
    assert "| 2.0 | 2 |" in (output / "results.md").read_text()

    again = _cli(commands[0], datasets_root, tmp_path, *SWEEP_TINY)  # nothing is retrained
    assert again.returncode == 0 and again.stdout.count("done before") == 4
    assert model.stat().st_mtime_ns == written

    figure1 = _cli(commands[1], datasets_root, tmp_path)
    assert figure1.returncode == 0, figure1.stderr[-2000:]
    checkpoint = tmp_path / "output" / "bccd" / "model_final.pth"  # as "Use the model" trains
    checkpoint.parent.mkdir(parents=True)
    torch.save({"model": build_model(load_config(QUICK_CONFIG)).state_dict()}, checkpoint)
    figure4 = _cli(commands[2], datasets_root, tmp_path, "--max-images", "3")
    assert figure4.returncode == 0, figure4.stderr[-2000:]
    focal = tmp_path / "output" / "focal"
    numbers = json.loads((focal / "focal_loss.json").read_text())
    assert numbers["figure4"]["images"] == 3 and numbers["figure4"]["dataset"] == "bccd_val"
    assert numbers["figure4"]["foreground"]["count"] > 0
    assert (focal / "focal_loss_cdf.png").is_file()
    assert (focal / "focal_loss_vs_probability.png").is_file()


@pytest.mark.once
def test_readme_recipe_ablation_command_plans(datasets_root: Path, tmp_path: Path) -> None:
    """docs/recipe.md's ablation (benchmarks/results/recipe_ablation), checked and planned
    (--dry-run: every variant's config loaded, nothing trained; the sweep itself is tested
    above)."""
    (command,) = block_after("recipe.md", "The ablation of the recipe, one change at a time")
    assert "--output benchmarks/results/recipe_ablation" in command
    command = command.replace("benchmarks/results/recipe_ablation", "output/ablation")
    planned = _cli(command, datasets_root, tmp_path, "--dry-run")
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "sweep: 11 runs (the base config and 10 variants x 1 seed)" in planned.stdout
    assert "[6/11] 320 px, seed 0:" in planned.stdout
    assert not (tmp_path / "output" / "ablation").exists()

    # As written, on the committed results: every run folder there is accepted as the same
    # run in this checkout (whatever its path), so the command resumes instead of refusing.
    if datasets_root.resolve() != (REPO_ROOT.parent / "shared" / "datasets").resolve():
        pytest.skip(f"the page's ../shared/datasets is not {datasets_root}")
    argv = [sys.executable, "-m", "retinanet_ext", *shlex.split(command)[1:], "--dry-run"]
    argv[argv.index("output/ablation")] = "benchmarks/results/recipe_ablation"
    committed = subprocess.run(argv, capture_output=True, text=True, timeout=900,
                               cwd=REPO_ROOT)
    assert committed.returncode == 0, committed.stderr[-3000:]
    assert "sweep: 11 runs (the base config and 10 variants x 1 seed)" in committed.stdout
