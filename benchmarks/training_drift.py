#!/usr/bin/env python
"""How fast two training runs drift apart: ours vs Detectron2's, and Detectron2's vs itself.

Trains two models from the same weights on the same fixed batches and prints their
losses side by side. ``--pair ours-vs-detectron2`` compares retinanet_ext's RetinaNet
with Detectron2's; ``--pair detectron2-vs-perturbed`` compares Detectron2's with
itself after adding N(0, 1e-7) to every weight, the drift that rounding alone causes.
If the two pairs drift alike, a gap between long runs of ours and theirs is chaos in
training (L1 box loss: its gradient is a sign), not a difference between the models.

    .venv/bin/python benchmarks/training_drift.py --pair ours-vs-detectron2
    .venv/bin/python benchmarks/training_drift.py --pair detectron2-vs-perturbed
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import retinanet_ext  # noqa: F401  (registers the components)
from retinanet_ext.config import use_detectron2_retinanet
from retinanet_ext.engine import load_config

REPO_ROOT = Path(__file__).resolve().parent.parent


def fixed_batches(count: int, generator: torch.Generator) -> list[list[dict]]:
    """``count`` batches of two 160x224 noise images with six random boxes each."""
    batches = []
    for _ in range(count):
        batch = []
        for _ in range(2):
            instances = Instances((160, 224))
            corner = torch.rand(6, 2, generator=generator) * torch.tensor([180.0, 120.0])
            size = 8 + torch.rand(6, 2, generator=generator) * 30
            instances.gt_boxes = Boxes(torch.cat([corner, corner + size], dim=1))
            instances.gt_classes = torch.randint(0, 3, (6,), generator=generator)
            image = torch.rand(3, 160, 224, generator=generator) * 255
            batch.append({"image": image, "instances": instances, "height": 160, "width": 224})
        batches.append(batch)
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=("ours-vs-detectron2", "detectron2-vs-perturbed"),
                        default="ours-vs-detectron2")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--config-file",
                        default=str(REPO_ROOT / "configs" / "retinanet_R18_FPN_quick.yaml"))
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # fixed reduction order: the same run twice prints the same

    theirs_cfg = use_detectron2_retinanet(load_config(args.config_file))
    first_cfg = (load_config(args.config_file) if args.pair == "ours-vs-detectron2"
                 else theirs_cfg)
    first = build_model(first_cfg)
    second = build_model(theirs_cfg)
    second.load_state_dict(first.state_dict())
    if args.pair == "detectron2-vs-perturbed":
        with torch.no_grad():
            for parameter in first.parameters():
                parameter.add_(torch.randn_like(parameter) * 1e-7)
    models = [(first, build_optimizer(first_cfg, first)),
              (second, build_optimizer(theirs_cfg, second))]
    batches = fixed_batches(4, torch.Generator().manual_seed(1))
    print(f"{args.pair}: step, loss_cls a/b, loss_box_reg a/b, largest relative gap")
    with EventStorage(0):
        for step in range(args.steps):
            losses = []
            for model, optimizer in models:
                loss_dict = model(batches[step % len(batches)])
                optimizer.zero_grad()
                sum(loss_dict.values()).backward()
                optimizer.step()
                losses.append({k: float(v) for k, v in loss_dict.items()})
            gap = max(abs(losses[0][k] - losses[1][k]) / max(abs(losses[1][k]), 1e-12)
                      for k in losses[0])
            if step % 5 == 0 or step == args.steps - 1:
                print(f"{step:4d}  {losses[0]['loss_cls']:.5f}/{losses[1]['loss_cls']:.5f}  "
                      f"{losses[0]['loss_box_reg']:.5f}/{losses[1]['loss_box_reg']:.5f}  "
                      f"{gap:.1e}", flush=True)


if __name__ == "__main__":
    main()
