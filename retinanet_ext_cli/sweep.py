"""``retinanet-ext sweep``: an ablation grid, one ``train_net.py`` run per combination and seed.

    retinanet-ext sweep --config-file configs/retinanet_R18_FPN_quick.yaml \\
        --grid MODEL.RETINANET.FOCAL_LOSS_GAMMA=0,1,2 --grid MODEL.FPN.NORM=GN,BN \\
        --seeds 0 1 2 --output output/sweep_gamma \\
        --dataset bccd_train=voc:../shared/datasets/bccd/BCCD:train \\
        --dataset bccd_val=voc:../shared/datasets/bccd/BCCD:val SOLVER.MAX_ITER 300

Or one change at a time from a base config (an ablation in the style of the paper's Table 1):

    retinanet-ext sweep --config-file configs/recipes/small_data_R18_FPN.yaml \\
        --variant "FPN 256: MODEL.FPN.OUT_CHANNELS 256" \\
        --variant "no GN: MODEL.FPN.NORM '' MODEL.RETINANET.NORM ''" ...

trains the base config (the row ``base``) and, for each ``--variant NAME: KEY VALUE ...``, the
base with those overrides (values split as a shell would, so ``''`` is an empty string).

Every combination of the ``--grid`` values (or every variant) is trained once per seed, one
after another, each as a ``train_net.py`` subprocess (config file, ``--dataset`` specs, the
trailing overrides, the combination, ``SEED`` and its own ``OUTPUT_DIR``), and evaluated on
``DATASETS.TEST`` (Detectron2's evaluation after the last iteration). Values are split at
commas outside brackets and quotes, so ``--grid INPUT.MIN_SIZE_TRAIN=(320,),(384,416)`` has two
values. Every grid key and value (every variant) is checked against the config before any run
starts.

Resumable: a run whose final metrics are recorded is not redone; an interrupted one (a
checkpoint in its folder) continues with ``--resume``; a run folder made with other settings
is an error. A run is known by its settings (the config's and its bases' parsed YAML, the
overrides, the datasets' paths relative to ``--output``, the combination, the seed), not by where
the checkout is: results committed with a repository resume in any clone of it.

Layout of ``--output``::

    runs/<combination>/seed<k>/   the run's OUTPUT_DIR, train_net.log, sweep_run.json
    results.md, results.csv       per combination (mean ± sd over seeds) and per run:
                                  AP, AP50, AP75, APs/m/l, per-class AP, train time, iterations
    results.png                   AP per combination: each seed and the mean ± sd

Train time is Detectron2's "Total training time" minus its time in hooks (checkpoints,
evaluations), summed over a run's attempts.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retinanet_ext_cli import CommandError, add_config_arguments

HELP = ("train every combination of --grid values, or every --variant of the config (x seeds)"
        " with train_net.py, resumably, "
        "and tabulate the COCO APs")

#: Overrides the sweep sets itself for every run.
RESERVED_KEYS = ("OUTPUT_DIR", "SEED")
SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RUN_STATE = "sweep_run.json"
RUN_LOG = "train_net.log"
TRAIN_NET = Path(__file__).resolve().parents[1] / "train_net.py"

_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*")
_EVAL_PREFIX = "bbox/"
_PROGRESS = re.compile(r"eta: (\S+)\s+iter: (\d+)\s+total_loss: (\S+)")
_TOTAL_TIME = re.compile(r"Total training time: (?:(\d+) days?, )?(\d+):(\d\d):(\d\d) "
                         r"\((?:(\d+) days?, )?(\d+):(\d\d):(\d\d) on hooks\)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a config key and its values; repeatable (the runs are the "
                        "product of all grids)")
    parser.add_argument("--variant", action="append", default=[],
                        metavar="'NAME: KEY VALUE ...'",
                        help="instead of --grid: the base config and, for each --variant, the "
                        "base with these overrides (one change at a time); repeatable")
    parser.add_argument("--seeds", nargs="+", default=["0"], metavar="N",
                        help="seeds, each combination trained once per seed (default: 0)")
    parser.add_argument("--output", default="output/sweep", metavar="DIR",
                        help="folder of the runs and the tables (default: output/sweep)")
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME=FORMAT:...",
                        help="register a dataset in every run (train_net.py's --dataset)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check and print the plan, run nothing")
    add_config_arguments(parser)


# ------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class GridAxis:
    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Variant:
    """``--variant NAME: KEY VALUE ...``: a named set of overrides on top of the base config."""

    name: str
    overrides: tuple[tuple[str, str], ...]


#: The column (and pseudo grid key) that names a run's variant in ``--variant`` sweeps.
VARIANT_KEY = "variant"
BASE_VARIANT = "base"


@dataclass(frozen=True)
class Run:
    """One training: a value per grid key (or a variant's overrides), a seed, and its folder
    under ``--output``; ``variant`` is the variant's name in ``--variant`` sweeps."""

    combination: tuple[tuple[str, str], ...]
    seed: int
    folder: str
    variant: str | None = None

    @property
    def overrides(self) -> list[str]:
        return [item for pair in self.combination for item in pair]


def split_values(text: str) -> list[str]:
    """Split at commas outside (), [], {} and quotes: ``(320,),(384,)`` -> two values."""
    values, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    values.append("".join(current).strip())
    return values


def parse_grid(text: str) -> GridAxis:
    """``KEY=V1,V2,...`` -> :class:`GridAxis`; a malformed one is a :class:`CommandError`."""
    key, sep, values_text = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.fullmatch(key):
        raise CommandError(f"--grid {text!r}: expected KEY=V1,V2,... with a config key such "
                           f"as MODEL.RETINANET.FOCAL_LOSS_GAMMA=0,2")
    if key in RESERVED_KEYS or key.split(".")[0] in RESERVED_KEYS:
        raise CommandError(f"--grid {key}: the sweep sets {key} itself (use --seeds / --output)")
    values = split_values(values_text)
    if any(not v for v in values):
        raise CommandError(f"--grid {text!r}: an empty value (values are separated by commas)")
    if len(set(values)) != len(values):
        raise CommandError(f"--grid {text!r}: a value is repeated")
    return GridAxis(key, tuple(values))


def parse_variant(text: str) -> Variant:
    """``NAME: KEY VALUE [KEY VALUE ...]`` -> :class:`Variant` (values split as by a shell)."""
    import shlex

    name, sep, rest = text.partition(":")
    name = name.strip()
    try:
        words = shlex.split(rest)
    except ValueError as error:
        raise CommandError(f"--variant {text!r}: {error}") from error
    if not sep or not name or not words or len(words) % 2:
        raise CommandError(f"--variant {text!r}: expected NAME: KEY VALUE [KEY VALUE ...], "
                           f"e.g. 'FPN 256: MODEL.FPN.OUT_CHANNELS 256'")
    if name == BASE_VARIANT:
        raise CommandError(f"--variant {text!r}: '{BASE_VARIANT}' names the base config's row")
    pairs = tuple(zip(words[::2], words[1::2], strict=True))
    for key, _ in pairs:
        if not _KEY.fullmatch(key):
            raise CommandError(f"--variant {name}: {key!r} is not a config key")
        if key in RESERVED_KEYS:
            raise CommandError(f"--variant {name}: the sweep sets {key} itself "
                               f"(use --seeds / --output)")
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise CommandError(f"--variant {name}: a key is given twice")
    return Variant(name, pairs)


def _slug(text: str, limit: int = 32) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")[:limit] or "_"


def combination_folder(combination: Sequence[tuple[str, str]]) -> str:
    """A readable, stable folder name: short keys and values, and a hash of the exact ones."""
    leaves = [key.rsplit(".", 1)[-1] for key, _ in combination]
    names = [key if leaves.count(leaf) > 1 else leaf
             for (key, _), leaf in zip(combination, leaves, strict=True)]
    digest = hashlib.sha1(json.dumps(list(combination)).encode()).hexdigest()[:6]
    parts = [f"{_slug(name)}={_slug(value)}"
             for name, (_, value) in zip(names, combination, strict=True)]
    return "__".join([*parts, digest]) if parts else f"base-{digest}"


def plan_runs(axes: Sequence[GridAxis], seeds: Sequence[int]) -> list[Run]:
    """Seed by seed, every combination (so each seed's full picture comes early)."""
    combinations = [tuple(zip([a.key for a in axes], values, strict=True))
                    for values in itertools.product(*(a.values for a in axes))]
    return [Run(c, seed, os.path.join("runs", combination_folder(c), f"seed{seed}"))
            for seed in seeds for c in combinations]


def plan_variant_runs(variants: Sequence[Variant], seeds: Sequence[int]) -> list[Run]:
    """Seed by seed, the base config then each variant."""
    rows = [Variant(BASE_VARIANT, ()), *variants]
    runs = []
    for seed in seeds:
        for variant in rows:
            digest = hashlib.sha1(json.dumps([variant.name, list(variant.overrides)])
                                  .encode()).hexdigest()[:6]
            folder = os.path.join("runs", f"{_slug(variant.name)}__{digest}", f"seed{seed}")
            runs.append(Run(variant.overrides, seed, folder, variant.name))
    return runs


def _parse_seeds(seeds: Sequence[str]) -> list[int]:
    try:
        parsed = [int(seed) for seed in seeds]
    except ValueError as error:
        raise CommandError(f"--seeds takes integers, got {' '.join(seeds)}") from error
    if len(set(parsed)) != len(parsed):
        raise CommandError(f"--seeds repeats a seed: {' '.join(seeds)}")
    return parsed


# -------------------------------------------------------------------------- the checks
def _check_overrides(opts: Sequence[str]) -> None:
    for key in list(opts)[::2]:
        if key in RESERVED_KEYS:
            raise CommandError(f"{key} is set by the sweep for every run: use "
                               f"{'--seeds' if key == 'SEED' else '--output'} instead")


def _coerce(cfg: Any, key: str, value: str) -> str:
    node = cfg
    for part in key.split("."):
        node = node.get(part) if hasattr(node, "get") else None
    if isinstance(node, float) and re.fullmatch(r"[+-]?\d+", value):
        return f"{value}.0"
    return value


def coerce_to_defaults(cfg: Any, axes: Sequence[GridAxis]) -> list[GridAxis]:
    """Integers given for a float key become floats (``GAMMA=0,2`` -> ``0.0``, ``2.0``):
    yacs refuses an int where the default is a float."""
    return [GridAxis(a.key, tuple(_coerce(cfg, a.key, v) for v in a.values)) for a in axes]


def coerce_variants(cfg: Any, variants: Sequence[Variant]) -> list[Variant]:
    """:func:`coerce_to_defaults` for ``--variant`` overrides."""
    return [Variant(v.name, tuple((k, _coerce(cfg, k, x)) for k, x in v.overrides))
            for v in variants]


def check_plan(args: argparse.Namespace, axes: Sequence[GridAxis],
               runs: Sequence[Run]) -> dict[str, int]:
    """Load the config of every combination before anything runs (bad keys and values,
    datasets, ``NUM_CLASSES``); returns each combination folder's ``SOLVER.MAX_ITER``.
    The ``--dataset`` specs are registered already (:func:`_base_config`)."""
    from retinanet_ext.data import check_num_classes
    from retinanet_ext.engine import ConfigError, check_datasets_available, load_config

    for axis in axes:  # one value at a time, so an error names the --grid it came from
        if axis.key == VARIANT_KEY:
            continue
        for value in axis.values:
            try:
                load_config(args.config_file, [*args.opts, axis.key, value])
            except ConfigError as error:
                raise CommandError(f"--grid {axis.key}={value}: {error}") from error
    max_iters: dict[str, int] = {}
    for run in runs:
        combo = os.path.dirname(run.folder)
        if combo in max_iters:
            continue
        try:
            cfg = load_config(args.config_file, [*args.opts, *run.overrides])
        except ConfigError as error:
            if run.variant is None:
                raise
            raise CommandError(f"--variant {run.variant}: {error}") from error
        if len(cfg.DATASETS.TEST) != 1 or not cfg.DATASETS.TRAIN:
            raise CommandError(f"{combo}: the sweep trains on DATASETS.TRAIN and evaluates on "
                               f"one DATASETS.TEST dataset; found TRAIN {list(cfg.DATASETS.TRAIN)}"
                               f", TEST {list(cfg.DATASETS.TEST)}")
        datasets = [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]
        check_datasets_available(datasets)
        try:
            check_num_classes(cfg, datasets)
        except ValueError as error:
            raise CommandError(f"{combo}: {error}") from error
        max_iters[combo] = int(cfg.SOLVER.MAX_ITER)
    return max_iters


def run_identity(args: argparse.Namespace, run: Run, output: Path) -> dict[str, Any]:
    """What makes a run the same run on a later invocation, wherever the checkout is: the
    config's settings (:func:`config_digest`), the overrides, the datasets (their paths
    relative to ``output``), the combination or variant, and the seed."""
    return _identity(args, run, config_digest=config_digest(Path(args.config_file)),
                     datasets=[portable_dataset_spec(spec, output) for spec in args.dataset])


def _legacy_identity(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    """The identity sweeps wrote before :func:`run_identity` (marked by ``config_sha256``):
    the config file's bytes and absolute paths, so such a run matches only in its checkout."""
    return _identity(
        args, run, config_file=os.path.abspath(args.config_file),
        config_sha256=hashlib.sha256(Path(args.config_file).read_bytes()).hexdigest(),
        datasets=list(args.dataset))


def _identity(args: argparse.Namespace, run: Run, **where: Any) -> dict[str, Any]:
    identity = {**where, "overrides": list(args.opts), "grid": dict(run.combination),
                "seed": run.seed}
    if run.variant is not None:
        identity["variant"] = run.variant
    return identity


def config_digest(config_file: Path) -> str:
    """sha256 of a config's settings: the file and its ``_BASE_`` files as parsed YAML, so
    comments and layout do not count and a change in a base file does."""
    text = json.dumps(_config_tree(config_file, ()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _config_tree(path: Path, seen: tuple[Path, ...]) -> Any:
    import yaml

    data = yaml.safe_load(path.read_text())
    base = data.get("_BASE_") if isinstance(data, dict) else None
    if isinstance(base, str) and "://" not in base:
        base_path = (Path(base) if os.path.isabs(base) else path.parent / base).resolve()
        if base_path.is_file() and base_path not in seen:
            data["_BASE_"] = _config_tree(base_path, (*seen, path.resolve()))
    return data


def portable_dataset_spec(spec: str, output: Path) -> str:
    """A ``--dataset`` spec with each field that names an existing file or folder written
    relative to ``output`` (the same in any checkout that has the data at the same place
    beside it), fields in name order."""
    from retinanet_ext.data import parse_dataset_spec

    parsed = parse_dataset_spec(spec)
    fields = []
    for key, value in sorted(parsed.arguments.items()):
        if os.path.exists(value):
            value = os.path.relpath(os.path.abspath(value), os.path.abspath(output))
        fields.append(f"{key}={value}")
    return f"{parsed.name}={parsed.format}:" + ":".join(fields)


def _read_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CommandError(f"{path} is unreadable ({error}); delete it to redo the run") from error


def check_existing_runs(output: Path, args: argparse.Namespace, runs: Sequence[Run]) -> None:
    """Refuse run folders made with other settings (their results would be mixed in)."""
    for run in runs:
        state = _read_state(output / run.folder / RUN_STATE)
        if state is None:
            continue
        stored = state.get("identity", {})
        identity = (_legacy_identity(args, run) if "config_sha256" in stored
                    else run_identity(args, run, output))
        differing = [k for k, v in identity.items() if stored.get(k) != v]
        if differing:
            raise CommandError(
                f"{output / run.folder} was made with other settings ({', '.join(differing)} "
                f"differ): use another --output, or delete that folder to redo the run")


# ------------------------------------------------------------------------------ running
def final_metrics(run_dir: Path, max_iter: int) -> dict[str, float] | None:
    """The evaluation after iteration ``max_iter`` in the run's ``metrics.json``
    (``{"AP": ..., "AP-<class>": ...}``), or None if it is not there (yet)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    found = None
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(entry, dict) and f"{_EVAL_PREFIX}AP" in entry:
            found = entry
    # Detectron2 records the evaluation after training at iteration max_iter - 1 or max_iter
    # (by version); periodic ones come earlier.
    if found is None or not found.get("iteration", -1) >= max_iter - 1:
        return None
    return {k[len(_EVAL_PREFIX):]: float(v) for k, v in found.items()
            if k.startswith(_EVAL_PREFIX)}


def train_seconds(log_text: str) -> float:
    """Detectron2's total training time minus its time in hooks, summed over the log."""
    total = 0.0
    for found in _TOTAL_TIME.finditer(log_text):
        values = [int(v) if v else 0 for v in found.groups()]
        whole = values[0] * 86400 + values[1] * 3600 + values[2] * 60 + values[3]
        hooks = values[4] * 86400 + values[5] * 3600 + values[6] * 60 + values[7]
        total += whole - hooks
    return total


def _command(args: argparse.Namespace, run: Run, run_dir: Path, resume: bool) -> list[str]:
    command = [sys.executable, str(TRAIN_NET), "--config-file", os.path.abspath(args.config_file)]
    for spec in args.dataset:
        command += ["--dataset", spec]
    if resume:
        command.append("--resume")
    return [*command, *args.opts, *run.overrides, "SEED", str(run.seed),
            "OUTPUT_DIR", str(run_dir)]


def _stream(process: subprocess.Popen, log: Any, label: str, max_iter: int) -> None:
    """Copy the run's output to its log; print a progress line at each 10 % of iterations."""
    next_report = max(1, max_iter // 10)
    for line in process.stdout:
        log.write(line)
        found = _PROGRESS.search(line)
        if found and int(found.group(2)) + 1 >= next_report:
            iteration = int(found.group(2)) + 1
            print(f"{label}   iteration {iteration}/{max_iter}, loss {found.group(3)}, "
                  f"eta {found.group(1)}", flush=True)
            next_report = iteration + max(1, max_iter // 10)


def train_run(args: argparse.Namespace, run: Run, run_dir: Path, max_iter: int,
              label: str) -> tuple[int, float]:
    """Run ``train_net.py`` for ``run`` (resuming if it has a checkpoint); returns its exit
    status and wall-clock seconds. Its output goes to ``run_dir/train_net.log``."""
    resume = (run_dir / "last_checkpoint").is_file()
    command = _command(args, run, run_dir, resume)
    print(f"{label} {'resuming' if resume else 'training'} (log: {run_dir / RUN_LOG})",
          flush=True)
    started = time.perf_counter()
    with open(run_dir / RUN_LOG, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        try:
            _stream(process, log, label, max_iter)
            code = process.wait()
        except BaseException:  # Ctrl-C or a crash here: do not leave the training running
            process.terminate()
            process.wait()
            raise
    return code, time.perf_counter() - started


def _write_state(path: Path, state: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(state, indent=1))
    os.replace(temporary, path)


def execute(args: argparse.Namespace, output: Path, run: Run, max_iter: int,
            label: str) -> dict[str, Any]:
    """Train and evaluate ``run`` unless its result is recorded; returns its state."""
    run_dir = output / run.folder
    state_path = run_dir / RUN_STATE
    state = _read_state(state_path) or {"identity": run_identity(args, run, output),
                                           "attempts": []}
    if state.get("result"):
        print(f"{label} done before: AP {state['result']['metrics'].get('AP', math.nan):.2f}, "
              f"skipped", flush=True)
        return state
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_state(state_path, state)
    code, wall = train_run(args, run, run_dir, max_iter, label)
    state["attempts"].append({"exit_status": code, "wall_s": round(wall, 1)})
    metrics = final_metrics(run_dir, max_iter) if code == 0 else None
    if metrics is not None:
        log_text = (run_dir / RUN_LOG).read_text(errors="replace")
        state["result"] = {"metrics": metrics, "iterations": max_iter,
                           "train_s": train_seconds(log_text),
                           "wall_s": round(sum(a["wall_s"] for a in state["attempts"]), 1)}
        print(f"{label} finished in {wall / 60:.1f} min: AP {metrics.get('AP', math.nan):.2f}, "
              f"AP50 {metrics.get('AP50', math.nan):.2f}", flush=True)
    else:
        why = (f"exit status {code}" if code else
               f"no evaluation after iteration {max_iter} in metrics.json")
        tail = (run_dir / RUN_LOG).read_text(errors="replace").splitlines()[-15:]
        print(f"{label} FAILED ({why}); last lines of {run_dir / RUN_LOG}:\n  "
              + "\n  ".join(tail), flush=True)
    _write_state(state_path, state)
    return state


# ------------------------------------------------------------------------------- tables
def _class_keys(states: Sequence[dict[str, Any]], prefix: str) -> list[str]:
    keys: dict[str, None] = {}
    for state in states:
        for key in (state.get("result") or {}).get("metrics", {}):
            if key.startswith(prefix):
                keys[key] = None
    return list(keys)


def run_rows(axes: Sequence[GridAxis], runs: Sequence[Run],
             states: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: grid values, seed, metrics, times, status (CSV columns)."""
    all_states = [states.get(run.folder, {}) for run in runs]
    metric_keys = [*SUMMARY_METRICS, *_class_keys(all_states, "AP-"),
                   *_class_keys(all_states, "AP50-")]
    rows = []
    for run, state in zip(runs, all_states, strict=True):
        result = state.get("result") or {}
        metrics = result.get("metrics", {})
        status = "done" if result else ("failed" if state.get("attempts") else "pending")
        values = dict(run.combination) if run.variant is None else {VARIANT_KEY: run.variant}
        row: dict[str, Any] = {"run": run.folder, **values, "seed": run.seed}
        row.update({key: metrics.get(key, math.nan) for key in metric_keys})
        row.update({"train_s": result.get("train_s", math.nan),
                    "wall_s": result.get("wall_s", math.nan),
                    "iterations": result.get("iterations", ""), "status": status})
        rows.append(row)
    return rows


def _mean_sd(values: Sequence[float]) -> str:
    values = [v for v in values if isinstance(v, float | int)]
    if not values or any(math.isnan(v) for v in values):
        return "nan" if values else ""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def summary_table(axes: Sequence[GridAxis], rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown: one line per combination, each metric as mean ± sd over the finished seeds."""
    keys = [axis.key for axis in axes]
    metrics = [*SUMMARY_METRICS, *[k for k in rows[0] if k.startswith("AP-")]] if rows else []
    header = [*keys, "seeds", *metrics, "train min", "iterations"]
    groups: dict[tuple, list[dict[str, Any]]] = {}  # in the plan's order
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    lines = []
    for combination, group in groups.items():
        done = [r for r in group if r["status"] == "done"]
        lines.append([*combination, len(done),
                      *[_mean_sd([r[m] for r in done]) for m in metrics],
                      _mean_sd([r["train_s"] / 60 for r in done]),
                      " ".join(sorted({str(r["iterations"]) for r in done}))])
    return _markdown_table(header, lines)


def runs_table(axes: Sequence[GridAxis], rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown: one line per run."""
    keys = [axis.key for axis in axes]
    metrics = [*SUMMARY_METRICS, *[k for k in rows[0] if k.startswith("AP-")]] if rows else []
    header = [*keys, "seed", *metrics, "train min", "iterations", "status"]
    body = [[*(r[k] for k in keys), r["seed"],
             *(f"{r[m]:.1f}" if r["status"] == "done" else "" for m in metrics),
             f"{r['train_s'] / 60:.1f}" if r["status"] == "done" else "", r["iterations"],
             r["status"]] for r in rows]
    return _markdown_table(header, body)


def machine_line() -> str:
    """CPU, core count and library versions, for the tables."""
    import platform

    import torch

    from retinanet_ext import compat

    cpu = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, torch "
            f"{torch.__version__}, {compat.describe_detectron2()}")


def write_results(output: Path, args: argparse.Namespace, axes: Sequence[GridAxis],
                  runs: Sequence[Run], states: dict[str, dict[str, Any]]) -> list[Path]:
    """``results.csv``, ``results.md`` and ``results.png`` under ``output``."""
    import csv

    rows = run_rows(axes, runs, states)
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    done = sum(r["status"] == "done" for r in rows)
    lines = [
        "# Sweep results", "",
        f"Config `{args.config_file}`; overrides `{' '.join(args.opts) or '(none)'}`; "
        f"datasets {', '.join(f'`{d}`' for d in args.dataset) or '(registered)'}; seeds "
        f"{' '.join(str(s) for s in sorted({r.seed for r in runs}))}. {done} of {len(runs)} "
        f"runs finished. Written {time.strftime('%Y-%m-%d %H:%M')} on {machine_line()}.", "",
        "COCO AP (IoU 0.5:0.95) and AP50/AP75/APs/APm/APl, in percent, on DATASETS.TEST "
        "after the last iteration; train min: training time without checkpoints and "
        "evaluations.", "",
        *variants_legend(runs),
        "## Per combination (mean ± sd over seeds)", "", *summary_table(axes, rows), "",
        "## Per run", "", *runs_table(axes, rows), ""]
    (output / "results.md").write_text("\n".join(lines))
    return [output / "results.md", output / "results.csv", plot_results(output, axes, rows)]


def variants_legend(runs: Sequence[Run]) -> list[str]:
    """Markdown lines naming each variant's overrides (none for a --grid sweep)."""
    import shlex

    overrides = {run.variant: run.combination for run in runs if run.variant is not None}
    if not overrides:
        return []
    lines = ["Variants: the base config, and the base with these overrides:", ""]
    for name, pairs in overrides.items():
        text = " ".join(f"{key} {shlex.quote(value)}" for key, value in pairs)
        lines.append(f"- {name}: `{text or '(none)'}`")
    return [*lines, ""]


def plot_results(output: Path, axes: Sequence[GridAxis], rows: Sequence[dict[str, Any]]) -> Path:
    """AP per combination: each seed's AP, and the mean ± sd over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [axis.key for axis in axes]
    combinations = list(dict.fromkeys(tuple(r[k] for k in keys) for r in rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(combinations) + 2), 4.8))
    for x, combination in enumerate(combinations):
        aps = [r["AP"] for r in rows if tuple(r[k] for k in keys) == combination
               and r["status"] == "done" and not math.isnan(r["AP"])]
        if not aps:
            continue
        ax.scatter([x - 0.12] * len(aps), aps, s=14, color="tab:gray", alpha=0.7, zorder=2)
        spread = statistics.stdev(aps) if len(aps) > 1 else 0.0
        ax.errorbar(x, statistics.mean(aps), yerr=spread, fmt="o", color="tab:blue",
                    capsize=6, markersize=8, zorder=3)
    labels = ["\n".join(v if k == VARIANT_KEY else f"{k.rsplit('.', 1)[-1]}={v}"
                        for k, v in zip(keys, c, strict=True)) or "base" for c in combinations]
    ax.set_xticks(range(len(combinations)), labels, fontsize=8)
    ax.set(ylabel="COCO AP (%)", xlim=(-0.6, len(combinations) - 0.4),
           title="AP per combination: seeds (grey), mean ± sd (blue)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = output / "results.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------- run
def _parse_axes(args: argparse.Namespace) -> list[GridAxis]:
    axes = [parse_grid(text) for text in args.grid]
    keys = [axis.key for axis in axes]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise CommandError(f"--grid {repeated[0]} is given twice: list its values in one --grid")
    overridden = sorted(set(keys) & set(list(args.opts)[::2]))
    if overridden:
        raise CommandError(f"{overridden[0]} is both in --grid and in the overrides")
    return axes


def _parse_variants(args: argparse.Namespace) -> list[Variant]:
    variants = [parse_variant(text) for text in args.variant]
    if variants and args.grid:
        raise CommandError("--grid and --variant do not mix: a sweep is a grid or a list of "
                           "variants of one base config")
    names = [v.name for v in variants]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CommandError(f"--variant {repeated[0]!r} is given twice")
    return variants


def _base_config(args: argparse.Namespace) -> Any:
    """The config file with the overrides (its errors are the user's)."""
    from retinanet_ext.data import register_dataset_spec
    from retinanet_ext.engine import load_config

    _check_overrides(args.opts)
    for spec in args.dataset:
        register_dataset_spec(spec)
    return load_config(args.config_file, args.opts)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' * (number != 1)}"


def run(args: argparse.Namespace) -> int:
    from retinanet_ext_cli import reparse_trailing_flags

    reparse_trailing_flags(args, add_arguments)  # "--seeds 0 1 SOLVER.MAX_ITER 300"
    axes = _parse_axes(args)
    variants = _parse_variants(args)
    seeds = _parse_seeds(args.seeds)
    base = _base_config(args)
    if variants:
        variants = coerce_variants(base, variants)
        runs = plan_variant_runs(variants, seeds)
        axes = [GridAxis(VARIANT_KEY, tuple(dict.fromkeys(r.variant for r in runs)))]
    else:
        axes = coerce_to_defaults(base, axes)
        runs = plan_runs(axes, seeds)
    max_iters = check_plan(args, axes, runs)
    output = Path(args.output)
    check_existing_runs(output, args, runs)
    seed_count = len(set(r.seed for r in runs))
    combinations = len(runs) // seed_count
    rows = (f"the base config and {_count(combinations - 1, 'variant')}" if variants else
            _count(combinations, "combination"))
    print(f"sweep: {_count(len(runs), 'run')} ({rows} x {_count(seed_count, 'seed')}) "
          f"under {output}", flush=True)
    states: dict[str, dict[str, Any]] = {}
    for number, item in enumerate(runs, start=1):
        values = (item.variant if item.variant is not None else
                  ", ".join(f"{k}={v}" for k, v in item.combination) or "base config")
        label = f"[{number}/{len(runs)}] {values}, seed {item.seed}:"
        max_iter = max_iters[os.path.dirname(item.folder)]
        if args.dry_run:
            print(label, " ".join(_command(args, item, output / item.folder, False)))
            continue
        states[item.folder] = execute(args, output, item, max_iter, label)
        written = write_results(output, args, axes, runs, states)
    if args.dry_run:
        return 0
    failed = [r.folder for r in runs if not states[r.folder].get("result")]
    print(f"results: {', '.join(str(p) for p in written)}")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; run the same command again "
              f"to retry them (finished runs are kept)")
    return 1 if failed else 0
