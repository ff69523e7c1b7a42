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

``--runtimes onnx,onnx-int8,openvino,openvino-int8`` adds the exported model run by
onnxruntime or OpenVINO (float32; ``-int8``: quantized by ``retinanet-ext export --int8``'s code
with ``--calibration-count`` images of DATASETS.TRAIN, spread over it, or
``--calibration-images``), evaluated on the same images by the same evaluator from the
detections of :class:`retinanet_ext.export.ExportedModel`. With ``ONEDNN_MAX_CPU_ISA=AVX2``
(and ``--precisions float32``) PyTorch and OpenVINO run AVX2 kernels only, as on a CPU without
AVX-512 (onnxruntime ignores it).
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

import torch  # noqa: E402
from _machine import cpu_model, load_average, results_header  # noqa: E402  (benchmarks/ is on sys.path)
from detectron2.utils.logger import setup_logger  # noqa: E402

import retinanet_ext  # noqa: E402,F401  (registers the components)
from retinanet_ext.data import register_dataset_spec  # noqa: E402
from retinanet_ext.engine import Trainer, load_config, load_weights  # noqa: E402
from retinanet_ext.modeling.precision import cpu_description  # noqa: E402


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
    parser.add_argument("--runtimes", default="",
                        help="comma separated among onnx, onnx-int8, openvino, openvino-int8: "
                        "exported models too")
    parser.add_argument("--calibration-images", nargs="+", default=None,
                        help="for onnx-int8 (default: DATASETS.TRAIN's images)")
    parser.add_argument("--calibration-count", type=int, default=32)
    parser.add_argument("--out",
                        default=str(REPO_ROOT / "benchmarks/results/precision_accuracy.md"))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    setup_logger(name="retinanet_ext")
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown:  # before any evaluation runs
        raise SystemExit(f"error: --runtimes {sorted(unknown)}: expected among {list(RUNTIMES)}")
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

    if runtimes:
        results.update(evaluate_exported(base, args, runtimes))

    import detectron2

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": f"{cpu_model()}; {cpu_description()}; {os.cpu_count()} logical CPUs",
        "oneDNN ISA cap (ONEDNN_MAX_CPU_ISA)": os.environ.get("ONEDNN_MAX_CPU_ISA", "none"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "weights": args.weights,
        "config": args.config_file or ("the demo's" if args.demo else ""),
        "dataset": ", ".join(base.DATASETS.TEST),
        "load_average_end": load_average(),
    }
    for package in ("onnxruntime", "openvino"):
        if any(RUNTIMES[r][0] == package for r in runtimes):
            info[package] = __import__(package).__version__
    write_results(Path(args.out), info, results, " ".join(sys.argv[1:]))


#: --runtimes: name -> (ExportedModel backend, int8).
RUNTIMES = {"onnx": ("onnxruntime", False), "onnx-int8": ("onnxruntime", True),
            "openvino": ("openvino", False), "openvino-int8": ("openvino", True)}


def evaluate_exported(base, args, runtimes: list[str]) -> dict:
    """{runtime: {"bbox", "seconds", "channels_last"}} for the checkpoint exported to ONNX
    (float32, and int8 where asked), run by each runtime on DATASETS.TEST's images."""
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, Instances

    from retinanet_ext.export import ExportedModel, export_model
    from retinanet_ext.export.quantize import calibration_files, quantize_onnx
    from retinanet_ext.predictor import Predictor

    cfg = base.clone()
    cfg.defrost()
    cfg.MODEL.RETINANET_EXT.PRECISION = "float32"
    cfg.freeze()
    predictor = Predictor(cfg, args.weights)
    work = tempfile.mkdtemp(prefix="precision_accuracy_onnx_")
    files = {False: export_model(predictor, os.path.join(work, "model.onnx"), "onnx")}
    if any(RUNTIMES[runtime][1] for runtime in runtimes):
        sources = args.calibration_images or [
            record["file_name"] for record in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])]
        calibration = calibration_files(sources, args.calibration_count)
        start = time.perf_counter()
        files[True] = quantize_onnx(files[False], os.path.join(work, "int8.onnx"), calibration)
        print(f"int8: {len(calibration)} calibration images, "
              f"{time.perf_counter() - start:.1f}s", flush=True)
    dataset = cfg.DATASETS.TEST[0]
    results = {}
    for runtime in runtimes:
        backend, int8 = RUNTIMES[runtime]
        model = ExportedModel(files[int8], backend,
                              score_thresh=cfg.MODEL.RETINANET.SCORE_THRESH_TEST)
        evaluator = Trainer.build_evaluator(cfg, dataset,
                                            os.path.join(base.OUTPUT_DIR, runtime))
        evaluator.reset()
        start = time.perf_counter()
        for record in DatasetCatalog.get(dataset):
            found = model(record["file_name"])
            instances = Instances(found.image_size,
                                  pred_boxes=Boxes(torch.from_numpy(found.boxes)),
                                  scores=torch.from_numpy(found.scores),
                                  pred_classes=torch.from_numpy(found.class_ids))
            evaluator.process([record], [{"instances": instances}])
        bbox = evaluator.evaluate()["bbox"]
        seconds = time.perf_counter() - start
        results[runtime] = {"bbox": dict(bbox), "seconds": seconds, "channels_last": False}
        print(runtime, json.dumps({k: round(v, 2) for k, v in bbox.items()
                                   if v == v and not k.startswith("AP50-")}), f"{seconds:.1f}s",
              flush=True)
    return results


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
