"""What reduced precision costs a trained model: the COCO evaluation of one checkpoint in float32
and in each other ``MODEL.RETINANET_EXT.PRECISION``, in one process, same data.

    # the main job's model (./run main writes output/demo; its synthetic data is regenerated
    # or reused from DEMO.DATA_DIR):
    ./run python benchmarks/precision_accuracy.py --demo --weights output/demo/model_final.pth
    # a model trained on your own data (as train_net.py takes it):
    ./run python benchmarks/precision_accuracy.py \\
        --config-file output/bccd/config.yaml --weights output/bccd/model_final.pth \\
        --dataset bccd_val=voc:../shared/datasets/bccd/BCCD:val \\
        DATASETS.TEST "('bccd_val',)"

The config is the ``config.yaml`` that training wrote to its OUTPUT_DIR (it holds, e.g., the
anchors chosen from the data). Writes a markdown table (``--out``) with the machine,
every COCO metric per precision and its difference to float32, and the evaluation time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import retinanet_ext  # noqa: E402,F401  (bridges, registrations)
from retinanet_ext.data import register_dataset_spec  # noqa: E402
from retinanet_ext.engine import Trainer, load_config, load_weights  # noqa: E402
from retinanet_ext.modeling.precision import cpu_description  # noqa: E402

import torch  # noqa: E402
from _machine import cpu_model, load_average, results_header  # noqa: E402  (benchmarks/ is on sys.path)
from detectron2.utils.logger import setup_logger  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="",
                        help="the model's config (default with --demo: the demo's)")
    parser.add_argument("--weights", required=True, help="the trained checkpoint")
    parser.add_argument("--demo", action="store_true",
                        help="the main job's model: its config and synthetic held-out split")
    parser.add_argument("--dataset", action="append", default=[],
                        help="NAME=FORMAT:PATHS, as train_net.py takes it (repeatable)")
    parser.add_argument("--precisions", default="float32,bfloat16",
                        help="comma separated; the first is the reference")
    parser.add_argument("--out",
                        default=str(REPO_ROOT / "benchmarks/results/precision_accuracy.md"))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    setup_logger(name="retinanet_ext")
    if not Path(args.weights).is_file():
        raise SystemExit(f"error: --weights {args.weights}: no such file")

    if args.demo:
        from retinanet_ext.demo import prepare_data, setup_demo_cfg

        work = tempfile.mkdtemp(prefix="precision_accuracy_")
        base = setup_demo_cfg(work, args.config_file or None, args.opts)
        prepare_data(base)  # the same synthetic set as training (reused when it is there)
    else:
        for spec in args.dataset:
            register_dataset_spec(spec)
        base = load_config(args.config_file, args.opts)
        base.OUTPUT_DIR = tempfile.mkdtemp(prefix="precision_accuracy_")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    results = {}
    for precision in precisions:
        cfg = base.clone()
        cfg.defrost()
        cfg.MODEL.RETINANET_EXT.PRECISION = precision
        cfg.OUTPUT_DIR = os.path.join(base.OUTPUT_DIR, precision)
        cfg.freeze()
        model = Trainer.build_model(cfg)
        load_weights(model, args.weights)
        start = time.perf_counter()
        metrics = Trainer.test(cfg, model)
        seconds = time.perf_counter() - start
        bbox = next(iter(metrics.values()))["bbox"] if len(cfg.DATASETS.TEST) > 1 \
            else metrics["bbox"]
        results[precision] = {"bbox": dict(bbox), "seconds": seconds,
                              "channels_last": bool(model.channels_last)}
        print(precision, json.dumps({k: round(v, 2) for k, v in bbox.items()
                                     if v == v and not k.startswith("AP50-")}), f"{seconds:.1f}s",
              flush=True)

    import detectron2

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": f"{cpu_model()}; {cpu_description()}; {os.cpu_count()} logical CPUs",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "weights": args.weights,
        "config": args.config_file or ("the demo's" if args.demo else ""),
        "dataset": ", ".join(base.DATASETS.TEST),
        "load_average_end": load_average(),
    }
    write_results(Path(args.out), info, results, " ".join(sys.argv[1:]))


def write_results(path: Path, info: dict, results: dict, argv: str) -> None:
    reference = next(iter(results))
    metrics = [k for k, v in results[reference]["bbox"].items()
               if v == v and not k.startswith("AP50-")]  # NaN (undefined) left out
    names = list(results)
    lines = [
        *results_header("Reduced precision on a trained model: COCO box AP",
                        f"./run python benchmarks/precision_accuracy.py {argv}", info),
        "| metric | " + " | ".join(names) + " | "
        + " | ".join(f"{n} - {reference}" for n in names[1:]) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " | "
        + " | ".join("---" for _ in names[1:]) + " |",
    ]
    for key in metrics:
        values = [results[n]["bbox"][key] for n in names]
        diffs = [v - values[0] for v in values[1:]]
        lines.append(f"| {key} | " + " | ".join(f"{v:.2f}" for v in values) + " | "
                     + " | ".join(f"{d:+.2f}" for d in diffs) + " |")
    lines.append("| evaluation s | " + " | ".join(f"{results[n]['seconds']:.1f}" for n in names)
                 + " | " + " | ".join("" for _ in names[1:]) + " |")
    lines.append("| channels-last | " + " | ".join(str(results[n]["channels_last"])
                                                   for n in names)
                 + " | " + " | ".join("" for _ in names[1:]) + " |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps({"info": info, "results": results},
                                                    indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
