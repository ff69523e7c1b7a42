"""Start-up time of the ``retinanet-ext`` command-line tool: wall-clock seconds of ``--help``
and ``predict --help``, each a fresh process, against what importing the package costs.

``retinanet-ext`` lives in its own package (``retinanet_ext_cli``) so that ``--help`` imports
no torch or Detectron2: ``import retinanet_ext`` registers the model components and pays for
both. Reference rows: the bare interpreter (the floor), ``python -m retinanet_ext --help``
(imports the package first, as ``retinanet-ext --help`` did before the tool moved out of it)
and ``python -c "import retinanet_ext"``. Commands alternate, rotating which goes first, so
that drifts in machine load hit all alike; one untimed round first warms the file cache.

    .venv/bin/python benchmarks/bench_cli.py                  # 7 repeats
    .venv/bin/python benchmarks/bench_cli.py --repeats 1 --out /tmp/cli_help.md
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import cpu_model, load_average, results_header  # benchmarks/ is on sys.path

REPO_ROOT = Path(__file__).resolve().parent.parent

#: The goal of issue 23 for ``retinanet-ext --help`` on this machine, in seconds.
GOAL_S = 1.0


def console_script() -> Path:
    """The ``retinanet-ext`` console script of the running interpreter's environment."""
    script = Path(sys.executable).parent / "retinanet-ext"
    if not script.is_file():
        raise SystemExit(f"error: no console script at {script}; install the package first "
                         "(pip install --no-deps -e .)")
    return script


def commands() -> dict[str, list[str]]:
    """Row name -> argv, in the order of the table."""
    tool = str(console_script())
    python = sys.executable
    return {
        "python -c pass": [python, "-c", "pass"],
        "retinanet-ext --help": [tool, "--help"],
        "retinanet-ext predict --help": [tool, "predict", "--help"],
        "python -m retinanet_ext --help": [python, "-m", "retinanet_ext", "--help"],
        'python -c "import retinanet_ext"': [python, "-c", "import retinanet_ext"],
    }


def time_once(argv: list[str]) -> float:
    """Seconds from starting ``argv`` to its exit; a failed command ends the benchmark."""
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv)} exited with {result.returncode}:\n"
                         f"{result.stderr[-2000:]}")
    return seconds


def time_round_robin(argvs: dict[str, list[str]], repeats: int) -> dict[str, list[float]]:
    """``repeats`` timings per command, commands alternating (rotated each round), after one
    untimed round."""
    for argv in argvs.values():
        time_once(argv)
    names = list(argvs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_once(argvs[name]))
        print(f"round {round_index + 1}/{repeats}: "
              + ", ".join(f"{name} {times[name][-1]:.2f} s" for name in names), flush=True)
    return times


def _version(*distributions: str) -> str:
    """The installed version of the first of ``distributions`` found (read from metadata:
    importing torch or Detectron2 here would warm the file cache for the timed commands)."""
    for distribution in distributions:
        try:
            return f"{importlib.metadata.version(distribution)} ({distribution})"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def _shown(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it (as the results show it)."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def machine_info(repeats: int) -> dict:
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "detectron2": _version("detectron2", "pb1-detectron2"),
        "numpy": _version("numpy"),
        "console_script": _shown(console_script()),
        "repeats": repeats,
        "load_average_start": load_average(),
    }


def write_results(path: Path, info: dict, rows: list[dict], argv: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    help_row = next(row for row in rows if row["command"] == "retinanet-ext --help")
    verdict = "met" if help_row["median_s"] < GOAL_S else "NOT met"
    lines = [
        *results_header("retinanet-ext start-up: seconds per command, CPU",
                        f".venv/bin/python benchmarks/bench_cli.py {argv}", info),
        f"Median (and min) of {info['repeats']} fresh processes each, wall clock from start to "
        "exit, commands alternating after one untimed round. `python -m retinanet_ext --help` "
        "imports the package (torch, Detectron2, registration) before the tool, as "
        "`retinanet-ext --help` did before it moved to `retinanet_ext_cli`. "
        f"Goal: `retinanet-ext --help` under {GOAL_S:g} s: {verdict}.",
        "",
        "| command | median s | min s |",
        "| --- | --- | --- |",
        *(f"| `{row['command']}` | {row['median_s']:.3f} | {row['min_s']:.3f} |"
          for row in rows),
    ]
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per command")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks/results/cli_help.md"),
                        help="the results markdown (a .json beside it)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    info = machine_info(args.repeats)
    print(json.dumps(info, indent=1), flush=True)
    times = time_round_robin(commands(), args.repeats)
    rows = [{"command": name, "median_s": statistics.median(t), "min_s": min(t), "runs": t}
            for name, t in times.items()]
    for row in rows:
        print(f"{row['command']:<34} median {row['median_s']:.3f} s  min {row['min_s']:.3f} s")
    info["load_average_end"] = load_average()
    write_results(Path(args.out), info, rows, " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
