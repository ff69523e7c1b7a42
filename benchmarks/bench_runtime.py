"""Seconds per image on CPU: our Predictor (PyTorch) vs the exported model in onnxruntime,
OpenVINO (if installed) and TorchScript, and Detectron2's RetinaNet (``DefaultPredictor``),
same weights, same image, in one process.

The R50-FPN models are those of ``bench_model.py`` (Detectron2's COCO RetinaNet config,
random init, predictors calibrated so that scores spread as a trained model's do); ours is
saved as a checkpoint, loaded by :class:`retinanet_ext.Predictor` and exported with
``retinanet_ext.export``. Every runner goes from the same uint8 image to detections
(pre-processing, network, post-processing); runs alternate between the runners, rotating
who goes first, and medians are reported with ratios to Detectron2's time. Parity columns
compare each runtime's detections with our PyTorch ones (``retinanet_ext.export.verify``).

    .venv/bin/python benchmarks/bench_runtime.py                  # R50-FPN, 512x768
    .venv/bin/python benchmarks/bench_runtime.py --size 128x192 --depth 18 --repeats 1
    .venv/bin/python benchmarks/bench_runtime.py --variants channels_last,bfloat16+channels_last
    .venv/bin/python benchmarks/bench_runtime.py --int8   # + export --int8's model
    .venv/bin/python benchmarks/bench_runtime.py --int8 --isa avx2 --out ..._avx2.md

``--isa avx2`` runs as on a CPU without AVX-512 (e.g. AMD EPYC before Zen 4): the process
restarts itself with ``ATEN_CPU_CAPABILITY=avx2`` (PyTorch's own kernels) and
``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN's: PyTorch's convolutions and OpenVINO), and leaves out
onnxruntime, whose kernels (MLAS) choose their instruction set from the CPU and cannot be
held back. An emulation on this CPU (same caches, memory and clock), not a measurement on
such a machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from _machine import cpu_model, cpu_simd_flags, load_average, results_header  # noqa: E402  (benchmarks/ is on sys.path)
from bench_model import build_models, parse_variant  # noqa: E402
from detectron2 import model_zoo  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402

import retinanet_ext  # noqa: E402  (registers the components)
from retinanet_ext.config import use_retinanet_ext_components  # noqa: E402
from retinanet_ext.export import ExportedModel, export_model  # noqa: E402
from retinanet_ext.export.verify import compare_detections  # noqa: E402


def make_cfg(depth: int, height: int, width: int, ours: bool, weights: str):
    """The bench_model config, tested at exactly ``height`` x ``width`` (no resize)."""
    cfg = retinanet_ext.add_retinanet_ext_config(get_cfg())
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.RESNETS.DEPTH = depth
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = min(height, width), max(height, width)
    cfg.DATASETS.TEST = ()
    return use_retinanet_ext_components(cfg) if ours else cfg


def build_runners(args, folder: str, height: int, width: int) -> dict[str, Callable]:
    """name -> function(bgr image) -> detections count; the first is our PyTorch one."""
    ours_by_variant, theirs = build_models(args.depth, args.cls_bias)
    ours = ours_by_variant["float32"]
    weights = os.path.join(folder, "model.pth")
    torch.save({"model": ours.state_dict()}, weights)
    their_weights = os.path.join(folder, "detectron2.pth")
    torch.save({"model": theirs.state_dict()}, their_weights)
    predictor = retinanet_ext.Predictor(make_cfg(args.depth, height, width, True, weights))
    runners: dict[str, Callable] = {"retinanet_ext PyTorch": predictor}
    for variant in args.variants:
        cfg = make_cfg(args.depth, height, width, True, weights)
        for key, value in parse_variant(variant).items():
            setattr(cfg.MODEL.RETINANET_EXT, key, value)
        runners[f"retinanet_ext PyTorch {variant}"] = retinanet_ext.Predictor(cfg)
    detectron2 = DefaultPredictor(make_cfg(args.depth, height, width, False, their_weights))
    runners["Detectron2 RetinaNet PyTorch"] = lambda bgr: detectron2(bgr)["instances"]
    formats = [("onnxruntime", "onnx", ".onnx"), ("openvino", "onnx", ".onnx"),
               ("TorchScript", "torchscript", ".ts")]
    exported: dict[str, str] = {}
    for backend, fmt, suffix in formats:
        if backend == "onnxruntime" and args.isa != "native":
            print(f"--isa {args.isa}: no onnxruntime rows (its kernels cannot be held back)")
            continue
        if backend == "openvino" and not _installed("openvino"):
            print("OpenVINO is not installed (pip install openvino): no OpenVINO row")
            continue
        if fmt not in exported:
            started = time.perf_counter()
            exported[fmt] = export_model(predictor, os.path.join(folder, "model" + suffix), fmt)
            print(f"exported {fmt} in {time.perf_counter() - started:.1f} s", flush=True)
        runners[f"{backend} (exported)"] = ExportedModel(
            exported[fmt], backend.lower() if backend != "TorchScript" else "torchscript")
        if args.int8 and fmt == "onnx":
            if "onnx-int8" not in exported:
                exported["onnx-int8"] = quantize_for_timing(exported["onnx"], folder, height,
                                                            width)
            runners[f"{backend} int8 (export --int8)"] = ExportedModel(
                exported["onnx-int8"], backend.lower())
    return runners


def quantize_for_timing(onnx_path: str, folder: str, height: int, width: int) -> str:
    """The int8 model of ``retinanet-ext export --int8``, calibrated on 8 generated images of
    the benchmark's size (the weights are random: the timing is what counts here; the AP cost
    of int8 on trained models is benchmarks/precision_accuracy.py's)."""
    from retinanet_ext.export.quantize import quantize_onnx
    from retinanet_ext.export.verify import sample_images

    started = time.perf_counter()
    path = quantize_onnx(onnx_path, os.path.join(folder, "model-int8.onnx"),
                         sample_images([(height, width)] * 8, seed=1))
    print(f"quantized to int8 in {time.perf_counter() - started:.1f} s", flush=True)
    return path


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def time_round_robin(runners: dict[str, Callable], image: np.ndarray,
                     repeats: int) -> dict[str, list[float]]:
    """One warm-up each, then ``repeats`` rounds, the starting runner rotating."""
    names = list(runners)
    for name in names:
        runners[name](image)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(repeats):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name](image)
            times[name].append(time.perf_counter() - start)
    return times


def parity(runners: dict[str, Callable], image: np.ndarray) -> dict[str, str]:
    """Each runner's detections vs ours (PyTorch): count, classes, max box/score diff."""
    reference = runners["retinanet_ext PyTorch"](image)
    out = {}
    for name, runner in runners.items():
        if name == "retinanet_ext PyTorch" or name.startswith("Detectron2"):
            continue
        result = runner(image)
        if "int8" in name:  # not float32 parity: int8 changes the outputs by design
            out[name] = (f"{len(result)}/{len(reference)} dets; int8, so not compared: its "
                         "cost is AP on trained models (precision_accuracy_*.md)")
            continue
        same, box_diff, score_diff = compare_detections(reference, result)
        out[name] = (f"{len(result)}/{len(reference)} dets, classes "
                     f"{'same' if same else 'differ'}, box {box_diff:.1e} px, "
                     f"score {score_diff:.1e}")
    return out


#: --isa -> ONEDNN_MAX_CPU_ISA.
ISA_CAPS = {"avx2": "AVX2"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="512x768", help="HxW of the image")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--variants", default="",
                        help="more PyTorch runners of ours, comma separated, as bench_model.py's "
                        "--variants (e.g. channels_last,bfloat16+channels_last)")
    parser.add_argument("--int8", action="store_true",
                        help="also the int8 model of `retinanet-ext export --int8` "
                        "(onnxruntime, and OpenVINO if installed)")
    parser.add_argument("--isa", choices=("native", *ISA_CAPS), default="native",
                        help="avx2: emulate a CPU without AVX-512 (PyTorch and OpenVINO held "
                        "to AVX2; onnxruntime left out)")
    parser.add_argument("--cls-bias", type=float, default=-3.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks/results/runtime_cpu.md"))
    args = parser.parse_args()
    if args.isa != "native" and os.environ.get("ONEDNN_MAX_CPU_ISA") != ISA_CAPS[args.isa]:
        env = {**os.environ, "ATEN_CPU_CAPABILITY": args.isa,
               "ONEDNN_MAX_CPU_ISA": ISA_CAPS[args.isa]}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)  # the caps act at start-up
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for variant in args.variants:
        parse_variant(variant)
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    info = machine_info(args)
    print(json.dumps(info, indent=1), flush=True)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        runners = build_runners(args, folder, height, width)
        times = time_round_robin(runners, image, args.repeats)
        parities = parity(runners, image)
        kernels = {name: openvino_conv_kernels(runner.path, image.shape[:2])
                   for name, runner in runners.items() if name.startswith("openvino")}
    for name, found in kernels.items():
        parities[name] += f"; conv kernels {found}"
    reference = statistics.median(times["Detectron2 RetinaNet PyTorch"])
    rows = [{"runner": name, "median_s": statistics.median(t), "min_s": min(t),
             "ratio": statistics.median(t) / reference, "parity": parities.get(name, "")}
            for name, t in times.items()]
    for row in rows:
        print(f"{row['runner']:<30} {row['median_s']:.3f} s/image  ratio {row['ratio']:.3f}  "
              f"{row['parity']}", flush=True)
    info["load_average_end"] = load_average()
    write_results(Path(args.out), info, rows, args, " ".join(sys.argv[1:]))


def openvino_conv_kernels(path: str, size: tuple[int, int]) -> str:
    """The kernels OpenVINO ran the model's convolutions with (its per-layer profile, one
    inference at ``size``; float32 hint, as the runtime compiles it), e.g.
    ``brgconv_avx2_f32 x72``: which instruction set was really used."""
    import collections

    import openvino

    compiled = openvino.Core().compile_model(
        path, "CPU", {"PERF_COUNT": "YES", "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    request.infer({0: np.zeros((1, 3, *size), dtype=np.float32)})
    counts = collections.Counter(info.exec_type for info in request.get_profiling_info()
                                 if info.node_type == "Convolution")
    return ", ".join(f"{kind} x{count}" for kind, count in counts.most_common())


def machine_info(args) -> dict:
    import detectron2
    import onnxruntime

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_simd_flags": cpu_simd_flags(),
        "isa": args.isa if args.isa == "native" else
        f"{args.isa}: ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY')}, "
        f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA')} (an emulation on this CPU)",
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "onnxruntime": onnxruntime.__version__,
        "model": f"RetinaNet R{args.depth}-FPN, 80 classes, random init, predictors "
        f"calibrated: logits N({args.cls_bias}, 1), deltas std 0.1",
        "image": f"{args.size}, uniform noise, no resize",
        "load_average_start": load_average(),
    }
    if _installed("openvino"):
        import openvino

        info["openvino"] = openvino.__version__
    return info


def write_results(path: Path, info: dict, rows: list[dict], args, argv: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        *results_header("Runtimes for a trained model, CPU: seconds per image",
                        f".venv/bin/python benchmarks/bench_runtime.py {argv}", info),
        f"Median (and min) of {args.repeats} runs each, from the uint8 image to detections "
        "(pre-processing, network, post-processing), runners alternating. Ratio: median / "
        "Detectron2's median. Parity: each runner's detections vs our float32 PyTorch ones.",
        "",
        "| runner | median s | min s | ratio to Detectron2 | parity with PyTorch |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {r['runner']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['ratio']:.3f} "
          f"| {r['parity']} |" for r in rows),
    ]
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
