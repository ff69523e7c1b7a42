"""Time our RetinaNetExt against Detectron2's RetinaNet on CPU, same weights, same inputs.

Both R50-FPN models are built in this process from Detectron2's COCO RetinaNet config (ours
switches only the meta-architecture, backbone and anchor-generator names) and Detectron2's
random-init weights are loaded into ours. Runs alternate between the two models (and which
one goes first) so that drifts in machine load hit both alike; medians are reported.

Inference: ``model.eval()`` forward of one image, with post-processing. Training step:
``model.train()`` forward + backward of one image with three boxes (the optimizer update
is the same code for both and is left out). Post-head rows: only the stage after the head
(the code that differs; backbone and head are the same convolutions in both), timed on
the same precomputed head outputs, which is far less sensitive to machine load.

The predictor weights are rescaled so that class logits spread with standard deviation 1
around ``--cls-bias`` (default -3.0, sigmoid 0.047; the prior init is -4.6) and deltas
with 0.1 (see :func:`calibrate_head`): as with a trained model, thousands of candidates
reach top-k and NMS, and scores are not saturated (no ties).

    ./run python benchmarks/bench_model.py                      # defaults
    ./run python benchmarks/bench_model.py --sizes 512x768 --infer-repeats 9
    ./run python benchmarks/bench_model.py --variants float32,channels_last,bfloat16+channels_last \
        --modes inference,backbone,head   # precision / memory layout (bf16: native-bf16 CPU)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from _machine import cpu_model, load_average, results_header  # noqa: E402  (benchmarks/ is on sys.path)
from detectron2 import model_zoo  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import retinanet_ext  # noqa: E402  (registers the components)
from retinanet_ext.config import use_retinanet_ext_components  # noqa: E402

#: --variants tokens -> our config keys (MODEL.RETINANET_EXT.*); joined with "+".
VARIANT_KEYS = {
    "float32": {"PRECISION": "float32"},
    "bfloat16": {"PRECISION": "bfloat16"},
    "float16": {"PRECISION": "float16"},  # CUDA only (benchmarks/bench_gpu.py)
    "channels_last": {"CHANNELS_LAST": True},
    "compile": {"COMPILE": True},
    # Benchmark only: NCHW even where the precision would switch channels-last on by itself
    # (meta_arch.reduced_precision_layout), to time what that switch gains.
    "nchw": {},
}


def parse_variant(name: str) -> dict:
    """Our config keys for a variant such as ``bfloat16+channels_last``."""
    keys: dict = {}
    for token in name.split("+"):
        if token not in VARIANT_KEYS:
            raise SystemExit(f"error: unknown variant part {token!r} in {name!r}; "
                             f"expected {sorted(VARIANT_KEYS)} joined with '+'")
        keys.update(VARIANT_KEYS[token])
    return keys


def build_models(depth: int, cls_bias: float, variants: tuple[str, ...] = ("float32",),
                 device: str = "cpu", calibrate_norms: bool = False
                 ) -> tuple[dict[str, torch.nn.Module], torch.nn.Module]:
    """({variant: ours}, theirs) with identical weights, in eval mode on ``device``; theirs is
    float32. ``calibrate_norms``: :func:`calibrate_frozen_norms` first (needed for float16)."""

    def cfg_for(ours: bool, keys: dict | None = None):
        cfg = retinanet_ext.add_retinanet_ext_config(get_cfg())
        cfg.merge_from_file(
            model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
        )
        cfg.MODEL.DEVICE = device
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.RESNETS.DEPTH = depth
        if depth in (18, 34):
            cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
        for key, value in (keys or {}).items():
            setattr(cfg.MODEL.RETINANET_EXT, key, value)
        return use_retinanet_ext_components(cfg) if ours else cfg

    torch.manual_seed(0)
    theirs = build_model(cfg_for(False)).eval()
    if calibrate_norms:
        calibrate_frozen_norms(theirs)
    calibrate_head(theirs, cls_bias)
    ours = {}
    for variant in variants:
        model = build_model(cfg_for(True, parse_variant(variant)))
        if "nchw" in variant.split("+"):
            model.channels_last = False
            for part in (model.backbone, model.head):
                part.to(memory_format=torch.contiguous_format)
        model.load_state_dict(theirs.state_dict())
        ours[variant] = model.eval()
    return ours, theirs


def calibrate_frozen_norms(model: torch.nn.Module) -> None:
    """Give every frozen BatchNorm of the backbone the statistics of its input on a calibration
    image, as training would: each then outputs zero-mean, unit-variance channels.

    With identity statistics, activations of a random-init ResNet grow with depth past float16's
    range (65504) in R101 at 800x1333: under float16 autocast everything becomes inf/NaN and
    there is nothing left to time. One forward pass; each layer's statistics are set by a
    pre-hook just before it runs, so later layers see the calibrated earlier ones.
    """
    from detectron2.layers import FrozenBatchNorm2d

    def set_statistics(module: torch.nn.Module, args: tuple) -> None:
        x = args[0].detach().float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)) + module.eps)

    norms = [m for m in model.backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    handles = [norm.register_forward_pre_hook(set_statistics) for norm in norms]
    try:
        with torch.no_grad():
            model.backbone(model.preprocess_image(make_inputs(512, 768, training=False)).tensor)
    finally:
        for handle in handles:
            handle.remove()


def calibrate_head(model: torch.nn.Module, cls_bias: float) -> None:
    """Give a random-init model the output statistics of a trained one.

    A random-init ResNet with frozen BatchNorm (identity statistics) lets activations grow
    with depth, so the head's outputs are huge: every score is 0 or exactly 1 and the
    top-k / NMS workload degenerates into ties. The network is positively homogeneous up to
    the predictors, so scaling their weights sets the spread of the outputs: class logits
    get standard deviation 1 around ``cls_bias`` and box deltas 0.1 on P3 of a calibration
    image. Same weights for both models afterwards.
    """
    item = make_inputs(512, 768, training=False)[0]
    with torch.no_grad():
        images = model.preprocess_image([item])
        p3 = model.backbone(images.tensor)[model.head_in_features[0]]
        for subnet, predictor, target_std in (
            (model.head.cls_subnet, model.head.cls_score, 1.0),
            (model.head.bbox_subnet, model.head.bbox_pred, 0.1),
        ):
            predictor.bias.zero_()
            spread = predictor(subnet(p3)).std().item()
            predictor.weight.mul_(target_std / spread)
        model.head.cls_score.bias.fill_(cls_bias)


def make_inputs(height: int, width: int, training: bool) -> list[dict]:
    generator = torch.Generator().manual_seed(height * 10000 + width)
    item = {"image": torch.rand(3, height, width, generator=generator) * 255}
    if training:
        instances = Instances((height, width))
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        fractions = torch.tensor(
            [[0.1, 0.1, 0.4, 0.5], [0.3, 0.2, 0.9, 0.8], [0.6, 0.6, 0.7, 0.75]]
        )
        instances.gt_boxes = Boxes(fractions * scale)
        instances.gt_classes = torch.tensor([0, 17, 56])
        item["instances"] = instances
    return [item]


def inference_step(model: torch.nn.Module, inputs: list[dict]) -> Callable[[], int]:
    def run() -> int:
        model.eval()
        with torch.no_grad():
            return len(model(inputs)[0]["instances"])

    return run


def training_step(model: torch.nn.Module, inputs: list[dict]) -> Callable[[], float]:
    def run() -> float:
        model.train()
        model.zero_grad(set_to_none=True)
        with EventStorage():
            losses = model(inputs)
        total = sum(losses.values())
        total.backward()
        return round(float(total), 4)

    return run


def post_head_steps(
    ours: torch.nn.Module, theirs: torch.nn.Module, inputs: list[dict], training: bool
) -> tuple[Callable[[], object], Callable[[], object]]:
    """The stage after the head only (anchors, targets and losses with their backward, or
    decoding, top-k and NMS), on the same precomputed features and head outputs.

    Both are ``DenseDetector``s: each side's ``forward_training`` / ``forward_inference``.
    """
    with torch.no_grad():
        images = theirs.preprocess_image(inputs)
        all_features = theirs.backbone(images.tensor)
        features = [all_features[name] for name in theirs.head_in_features]
        predictions = theirs.head(features)
    gt_instances = [item["instances"] for item in inputs] if training else None

    def fresh_predictions() -> list[list[torch.Tensor]]:
        return [[x.detach().clone().requires_grad_(training) for x in p] for p in predictions]

    def step(model: torch.nn.Module) -> Callable[[], object]:
        def run() -> object:
            if training:
                with EventStorage():
                    losses = model.forward_training(
                        images, features, fresh_predictions(), gt_instances
                    )
                total = sum(losses.values())
                total.backward()
                return round(float(total), 4)
            with torch.no_grad():  # Detectron2 applies sigmoid_ in place: give it a copy
                return len(model.forward_inference(images, features, fresh_predictions())[0])

        return run

    ours_step, theirs_step = step(ours), step(theirs)
    return ours_step, theirs_step


def network_step(model: torch.nn.Module, inputs: list[dict], part: str
                 ) -> Callable[[], object]:
    """Inference of the backbone alone, or of the head alone on precomputed features, in the
    model's precision and memory layout (ours) or float32 (Detectron2's)."""
    from retinanet_ext.modeling.precision import network_autocast

    dtype = getattr(model, "network_dtype", torch.float32)  # as the model resolved it
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        with network_autocast(dtype, "cpu"):
            all_features = model.backbone(images.tensor)
        features = [all_features[name] for name in model.head_in_features]

    def run() -> object:
        with torch.no_grad(), network_autocast(dtype, "cpu"):
            if part == "backbone":
                outputs = list(model.backbone(images.tensor).values())
            else:
                logits, deltas = model.head(features)
                outputs = [*logits, *deltas]
        return str(outputs[0].dtype).replace("torch.", "")

    return run


def time_alternating(
    steps: list[Callable[[], object]], repeats: int, warmup: int = 1
) -> tuple[list[list[float]], list[object], list[float]]:
    """``warmup`` (at least one) warm-up calls each, the first timed (compilation included),
    then ``repeats`` timed runs each, the order rotating (and reversing every other round)
    from one round to the next.

    Returns per step: its times, its last warm-up's output, its first call's time."""
    firsts, results = [], []
    for step in steps:
        start = time.perf_counter()
        results.append(step())
        firsts.append(time.perf_counter() - start)
        for _ in range(warmup - 1):
            results[-1] = step()
    times: list[list[float]] = [[] for _ in steps]
    for index in range(repeats):
        order = list(range(len(steps)))
        shift = index % len(steps)
        order = order[shift:] + order[:shift]
        if index % 2:
            order.reverse()
        for position in order:
            start = time.perf_counter()
            steps[position]()
            times[position].append(time.perf_counter() - start)
    return times, results, firsts


MODES = ("inference", "train step", "backbone", "head", "post-head inference",
         "post-head train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512x768,800x1333", help="HxW list, comma separated")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--infer-repeats", type=int, default=5)
    parser.add_argument("--train-repeats", type=int, default=3)
    parser.add_argument(
        "--large-repeats-scale",
        type=float,
        default=0.6,
        help="repeat counts are multiplied by this (at least 2) for images over 600k pixels",
    )
    parser.add_argument(
        "--post-repeats", type=int, default=7, help="runs of the post-head stage alone"
    )
    parser.add_argument(
        "--modes",
        default="inference,train step,post-head inference,post-head train",
        help=f"which rows to run, comma separated, among {', '.join(MODES)} ('backbone', "
        "'head': that part alone, inference)",
    )
    parser.add_argument(
        "--variants",
        default="float32",
        help="our model's settings, comma separated; each is parts joined with '+' among "
        f"{sorted(VARIANT_KEYS)}, e.g. float32,channels_last,bfloat16+channels_last. "
        "Detectron2's model is always float32.",
    )
    parser.add_argument("--cls-bias", type=float, default=-3.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks/results/model_cpu.md"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import detectron2

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "model": f"RetinaNet R{args.depth}-FPN, 80 classes, random init, predictors "
        f"calibrated: logits N({args.cls_bias}, 1), deltas std 0.1",
        "load_average_start": load_average(),
    }
    print(json.dumps(info, indent=1), flush=True)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    for variant in variants:
        parse_variant(variant)
    info["variants"] = ", ".join(variants)
    if any("bfloat16" in v for v in variants):
        from retinanet_ext.modeling.precision import cpu_description

        info["cpu_bf16"] = cpu_description()
    ours, theirs = build_models(args.depth, args.cls_bias, variants)
    modes = [mode.strip() for mode in args.modes.split(",")]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"error: unknown --modes {sorted(unknown)}; expected among {MODES}")

    rows = []
    for size in args.sizes.split(","):
        height, width = (int(v) for v in size.lower().split("x"))
        scale = args.large_repeats_scale if height * width > 600_000 else 1.0
        for mode in MODES:
            if mode not in modes:
                continue
            training = "train" in mode
            post_head = mode.startswith("post-head")
            if post_head:
                repeats = args.post_repeats
            else:  # inference, backbone and head rows take --infer-repeats
                base = args.train_repeats if mode == "train step" else args.infer_repeats
                repeats = max(2, round(base * scale))
            inputs = make_inputs(height, width, training=training)
            # The post-head stage is float32 whatever the variant: time it once.
            mode_variants = variants[:1] if post_head else variants
            if post_head:
                ours_step, theirs_step = post_head_steps(
                    ours[mode_variants[0]], theirs, inputs, training)
                steps = [ours_step, theirs_step]
            elif mode in ("backbone", "head"):
                steps = [network_step(ours[v], inputs, mode) for v in mode_variants]
                steps.append(network_step(theirs, inputs, mode))
            else:
                make_step = training_step if training else inference_step
                steps = [make_step(ours[v], inputs) for v in mode_variants]
                steps.append(make_step(theirs, inputs))
            times, outputs, firsts = time_alternating(steps, repeats)
            theirs_times, theirs_out = times[-1], outputs[-1]
            for index, variant in enumerate(mode_variants):
                row = {
                    "size": f"{height}x{width}",
                    "mode": mode,
                    "variant": variant,
                    "repeats": repeats,
                    "ours_median_s": statistics.median(times[index]),
                    "theirs_median_s": statistics.median(theirs_times),
                    "ours_min_s": min(times[index]),
                    "theirs_min_s": min(theirs_times),
                    "ours_first_s": firsts[index],
                    "ours_output": outputs[index],
                    "theirs_output": theirs_out,
                }
                row["ratio"] = row["ours_median_s"] / row["theirs_median_s"]
                row["ratio_min"] = row["ours_min_s"] / row["theirs_min_s"]
                rows.append(row)
                print(
                    f"{row['size']:>9} {mode:<19} {variant:<24} n={repeats}  "
                    f"ours {row['ours_median_s']:.3f}s (first {row['ours_first_s']:.1f}s)  "
                    f"theirs {row['theirs_median_s']:.3f}s  ratio {row['ratio']:.3f} "
                    f"(of mins {row['ratio_min']:.3f})  "
                    f"(outputs: {row['ours_output']} vs {theirs_out})",
                    flush=True,
                )
    info["load_average_end"] = load_average()
    write_results(Path(args.out), info, rows, " ".join(sys.argv[1:]))


def write_results(path: Path, info: dict, rows: list[dict], argv: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        *results_header("RetinaNetExt vs Detectron2 RetinaNet, CPU",
                        f".venv/bin/python benchmarks/bench_model.py {argv}", info),
        "Median (and min) seconds per call, same weights and inputs, runs alternating. "
        "Outputs: detections (inference) or total loss (training) of each model. "
        "'post-head' rows time only what follows the head (anchors, matching, losses and "
        "their backward; or threshold, top-k, decoding, NMS) on the same precomputed head "
        "outputs: the part where the two implementations differ.",
        "",
        "Variant: our model's settings (Detectron2's is float32 in every row); 'first': our "
        "first call, compilation included. Outputs of backbone/head rows: the dtype.",
        "",
        "| image | mode | variant | runs | ours median | D2 median | ratio ours/D2 | ours min "
        "| D2 min | ratio of mins | ours first call | outputs ours / D2 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        outputs = f"{row['ours_output']} / {row['theirs_output']}"
        lines.append(
            f"| {row['size']} | {row['mode']} | {row['variant']} | {row['repeats']} "
            f"| {row['ours_median_s']:.3f} | {row['theirs_median_s']:.3f} | {row['ratio']:.3f} "
            f"| {row['ours_min_s']:.3f} | {row['theirs_min_s']:.3f} | {row['ratio_min']:.3f} "
            f"| {row['ours_first_s']:.2f} | {outputs} |"
        )
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
