"""Time our RetinaNetExt against Detectron2's RetinaNet on a CUDA GPU, same weights, same inputs.

Models as in ``bench_model.py`` (Detectron2's COCO RetinaNet config, R50 or R101, random init
with calibrated predictors so that post-processing has a trained model's workload; our model
loads Detectron2's weights). For each depth:

* inference, images/s at each batch size: Detectron2's model in float32 and under
  ``torch.autocast("cuda", float16)`` (what a Detectron2 user gets with AMP), ours in each
  ``--variants`` (``float32``; ``float16``: ``MODEL.RETINANET_EXT.PRECISION float16``, the
  network under autocast and the post-processing in float32; ``+channels_last``). Each of ours
  is compared with Detectron2's run in the same precision and with its float32 run.
* training, iterations/s at ``--train-batch``: the step of Detectron2's ``AMPTrainer``
  (autocast float16, ``GradScaler``, SGD), for both models.

Images are random, already on the GPU; every timed call ends with ``torch.cuda.synchronize``.
Runs alternate between the models; medians are reported.

    python benchmarks/bench_gpu.py                                   # R50 and R101, 800x1333
    python benchmarks/bench_gpu.py --depths 50 --batches 1 --infer-repeats 5 --train-repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, load_average, results_header  # noqa: E402
from bench_model import (  # noqa: E402
    REPO_ROOT,
    build_models,
    make_inputs,
    parse_variant,
    time_alternating,
)
from detectron2.utils.events import EventStorage  # noqa: E402


def reduced_precision(variant: str) -> bool:
    return bool({"float16", "bfloat16"} & set(variant.split("+")))


def batch_inputs(height: int, width: int, batch: int, training: bool) -> list[dict]:
    """``batch`` different random images (with three boxes each when ``training``) on the
    GPU."""
    items = []
    for index in range(batch):
        item = make_inputs(height + index, width, training)[0]  # another seed per image
        item["image"] = item["image"][:, :height].cuda()
        if training:
            item["instances"] = item["instances"].to("cuda")
        items.append(item)
    return items


def inference_step(model: torch.nn.Module, inputs: list[dict], amp: bool
                   ) -> Callable[[], int]:
    def run() -> int:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            outputs = model(inputs)
        torch.cuda.synchronize()
        return sum(len(output["instances"]) for output in outputs)

    return run


def amp_training_step(model: torch.nn.Module, inputs: list[dict], outer_autocast: bool
                      ) -> Callable[[], float]:
    """Detectron2's ``AMPTrainer.run_step``: forward under autocast float16, scaled backward,
    ``GradScaler`` step of SGD. Ours autocasts its own network (PRECISION float16), so no
    outer autocast there."""
    model.train()
    # Learning rate 0: the update's arithmetic runs, the weights stay put, so every timed step
    # sees the same model (a random-init model at a real learning rate diverges within steps).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda")

    def run() -> float:
        with EventStorage(), torch.autocast("cuda", dtype=torch.float16,
                                            enabled=outer_autocast):
            losses = model(inputs)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        torch.cuda.synchronize()
        return round(float(total.detach()), 3)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", default="50,101")
    parser.add_argument("--size", default="800x1333", help="HxW")
    parser.add_argument("--batches", default="1,8", help="inference batch sizes")
    parser.add_argument("--variants", default="float32,float16+nchw,float16,bfloat16+nchw,bfloat16",
                        help="our model's settings (bench_model.py's --variants): float16 and "
                        "bfloat16 come with channels-last on CUDA, '+nchw' keeps NCHW")
    parser.add_argument("--infer-repeats", type=int, default=20)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cls-bias", type=float, default=-3.0)
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks/results/model_gpu.md"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: bench_gpu.py needs a CUDA device; torch.cuda.is_available() "
                         "is False")
    torch.backends.cudnn.benchmark = True  # what a Detectron2 user's CUDNN_BENCHMARK does
    import detectron2

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    for variant in variants:
        parse_variant(variant)
    height, width = (int(v) for v in args.size.lower().split("x"))
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(),
        "cpu": f"{cpu_model()} ({os.cpu_count()} logical CPUs)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "detectron2": detectron2.__version__,
        "image": f"{height}x{width}, random, on the GPU",
        "cudnn.benchmark": True,
        "load_average_start": load_average(),
    }
    print(json.dumps(info, indent=1), flush=True)
    rows = []
    for depth in (int(d) for d in args.depths.split(",")):
        ours, theirs = build_models(depth, args.cls_bias, variants, device="cuda",
                                    calibrate_norms=True)
        for batch in (int(b) for b in args.batches.split(",")):
            inputs = batch_inputs(height, width, batch, training=False)
            steps = [inference_step(theirs, inputs, amp=False),
                     inference_step(theirs, inputs, amp=True)]
            steps += [inference_step(ours[v], inputs, amp=False) for v in variants]
            times, outputs, _ = time_alternating(steps, args.infer_repeats, args.warmup)
            medians = [statistics.median(t) for t in times]
            for index, variant in enumerate(variants, start=2):
                amp = reduced_precision(variant)  # compared with Detectron2's float16 AMP
                same = medians[1] if amp else medians[0]
                rows.append({
                    "depth": depth, "mode": "inference", "batch": batch, "variant": variant,
                    "ours_images_s": batch / medians[index],
                    "d2_fp32_images_s": batch / medians[0],
                    "d2_amp_images_s": batch / medians[1],
                    "ratio_same_precision": medians[index] / same,
                    "ratio_vs_d2_fp32": medians[index] / medians[0],
                    "detections": f"{outputs[index]} / {outputs[1 if amp else 0]}",
                    "repeats": args.infer_repeats,
                })
                print(json.dumps(rows[-1]), flush=True)
            del inputs, steps
            torch.cuda.empty_cache()
        # Training at batch --train-batch with AMP: Detectron2's AMPTrainer step for both.
        amp_variants = [v for v in variants if reduced_precision(v)]
        inputs = batch_inputs(height, width, args.train_batch, training=True)
        torch.cuda.reset_peak_memory_stats()
        steps = [amp_training_step(theirs, inputs, outer_autocast=True)]
        steps += [amp_training_step(ours[v], inputs, outer_autocast=False)
                  for v in amp_variants]
        times, outputs, _ = time_alternating(steps, args.train_repeats, args.warmup)
        medians = [statistics.median(t) for t in times]
        for index, variant in enumerate(amp_variants, start=1):
            rows.append({
                "depth": depth, "mode": "train step (AMP)", "batch": args.train_batch,
                "variant": variant, "ours_iter_s": 1 / medians[index],
                "d2_amp_iter_s": 1 / medians[0],
                "ratio_same_precision": medians[index] / medians[0],
                "loss": f"{outputs[index]} / {outputs[0]}", "repeats": args.train_repeats,
                "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
            })
            print(json.dumps(rows[-1]), flush=True)
        del ours, theirs, inputs, steps
        torch.cuda.empty_cache()
    info["load_average_end"] = load_average()
    write_results(Path(args.out), info, rows, " ".join(sys.argv[1:]))


def write_results(path: Path, info: dict, rows: list[dict], argv: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        *results_header("RetinaNetExt vs Detectron2 RetinaNet, CUDA GPU",
                        f"python benchmarks/bench_gpu.py {argv}", info),
        "Inference: images/s (batch / median seconds per call). Detectron2 'AMP' = its model "
        "under torch.autocast float16; ours 'float16' / 'bfloat16' = MODEL.RETINANET_EXT.PRECISION "
        "(network under autocast, post-processing float32), with the channels-last layout that "
        "precision brings on CUDA, or kept NCHW ('+nchw'). Reduced-precision rows are compared "
        "with Detectron2's float16 AMP. Ratio = our time / Detectron2's time "
        "(below 1: ours faster), in the same precision and against Detectron2's float32. "
        "The backbone's frozen BatchNorms carry the statistics of a calibration image and the "
        "predictors a trained model's output spread (bench_model.py), so float16 does not "
        "overflow and post-processing has a real workload. "
        "Detections: total over the batch, ours / Detectron2's in the same precision.",
        "",
        "| model | batch | ours | ours images/s | D2 fp32 images/s | D2 AMP images/s "
        "| ratio, same precision | ratio vs D2 fp32 | detections |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if row["mode"] == "inference":
            lines.append(
                f"| R{row['depth']}-FPN | {row['batch']} | {row['variant']} "
                f"| {row['ours_images_s']:.1f} | {row['d2_fp32_images_s']:.1f} "
                f"| {row['d2_amp_images_s']:.1f} | {row['ratio_same_precision']:.3f} "
                f"| {row['ratio_vs_d2_fp32']:.3f} | {row['detections']} |")
    lines += [
        "",
        "Training with AMP: iterations/s of Detectron2's AMPTrainer step (autocast float16, "
        "GradScaler, SGD) on the same batch; loss of the last warm-up step, ours / Detectron2's. "
        "Peak memory: of the whole training section (both models' steps: the larger of the "
        "two, plus the other model's weights).",
        "",
        "| model | batch | ours | ours it/s | D2 AMP it/s | ratio, same precision "
        "| peak GPU memory (GiB, process) | loss |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if row["mode"] != "inference":
            lines.append(
                f"| R{row['depth']}-FPN | {row['batch']} | {row['variant']} "
                f"| {row['ours_iter_s']:.2f} | {row['d2_amp_iter_s']:.2f} "
                f"| {row['ratio_same_precision']:.3f} | {row['peak_memory_gib']:.1f} "
                f"| {row['loss']} |")
    path.write_text("\n".join(lines) + "\n")
    (path.with_suffix(".json")).write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
