"""``retinanet-ext convert-weights``: torchvision's ImageNet ResNet checkpoints for the backbone.

    retinanet-ext convert-weights resnet50-11ad3fa6.pth output/weights/resnet50_torchvision.pkl

torchvision names a ResNet's weights ``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``,
``layer1.0.bn1.*``, ``layer1.0.downsample.{0,1}.*``, ``fc.*``; Detectron2's ResNet (the
backbone's ``bottom_up``) names them ``stem.conv1.weight``, ``stem.conv1.norm.*``,
``res2.0.conv1.weight``, ``res2.0.conv1.norm.*``, ``res2.0.shortcut{,.norm}.*``. Each key is
renamed by one rule of :data:`RENAMES`; the classifier (``fc.*``) and the batch counters
(``num_batches_tracked``) are dropped; any other key is an error (not a torchvision ResNet).

The output is what Detectron2's own converter (``tools/convert-torchvision-to-d2.py``)
writes: a ``.pkl`` of numpy arrays with ``"__author__": "torchvision"`` and
``"matching_heuristics": True``, so Detectron2's checkpointer matches the names to the
model's ``backbone.bottom_up.*`` keys; the project's safe loader reads it. torchvision's
weights expect RGB input normalised by its mean/std and the stride in the 3x3 conv:
``configs/finetune/retinanet_R50_FPN_torchvision.yaml`` sets that.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from typing import Any

from retinanet_ext_cli import CommandError

HELP = ("convert a torchvision ImageNet ResNet checkpoint (.pth) to a backbone .pkl for "
        "MODEL.WEIGHTS")

_NORM_PARAMS = r"(weight|bias|running_mean|running_var)"
#: (torchvision key pattern, Detectron2 key template); the first match renames a key.
RENAMES: tuple[tuple[str, str], ...] = (
    (r"^conv1\.weight$", "stem.conv1.weight"),
    (rf"^bn1\.{_NORM_PARAMS}$", r"stem.conv1.norm.\1"),
    (r"^layer(?P<stage>[1-4])\.(\d+)\.conv(\d)\.weight$", r"res{stage}.\2.conv\3.weight"),
    (rf"^layer(?P<stage>[1-4])\.(\d+)\.bn(\d)\.{_NORM_PARAMS}$", r"res{stage}.\2.conv\3.norm.\4"),
    (r"^layer(?P<stage>[1-4])\.(\d+)\.downsample\.0\.weight$", r"res{stage}.\2.shortcut.weight"),
    (rf"^layer(?P<stage>[1-4])\.(\d+)\.downsample\.1\.{_NORM_PARAMS}$",
     r"res{stage}.\2.shortcut.norm.\3"),
)
#: Keys the backbone has no use for: the ImageNet classifier and BatchNorm's batch counters.
DROPPED = re.compile(r"^fc\.(weight|bias)$|(^|\.)num_batches_tracked$")
#: (block kind, blocks per stage) -> MODEL.RESNETS.DEPTH
DEPTHS = {("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34,
          ("bottleneck", (3, 4, 6, 3)): 50, ("bottleneck", (3, 4, 23, 3)): 101,
          ("bottleneck", (3, 8, 36, 3)): 152}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT.pth",
                        help="torchvision ResNet state dict (e.g. resnet50-11ad3fa6.pth)")
    parser.add_argument("output", metavar="OUTPUT.pkl", help="the converted weights to write")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")


def torchvision_to_detectron2_key(key: str) -> str | None:
    """Detectron2's name for torchvision ResNet key ``key``; None for a dropped key.

    Raises:
        CommandError: ``key`` is no torchvision ResNet key.
    """
    if DROPPED.search(key):
        return None
    for pattern, template in RENAMES:
        found = re.match(pattern, key)
        if found:
            stage = found.groupdict().get("stage")
            template = template.replace("{stage}", str(int(stage) + 1)) if stage else template
            return found.expand(template)
    raise CommandError(f"'{key}' is not a key of a torchvision ResNet (expected conv1.weight, "
                       f"bn1.*, layer1.0.conv1.weight, ..., fc.*)")


def describe_resnet(state: dict[str, Any]) -> dict[str, Any]:
    """Block kind, blocks per stage, depth and group width of a torchvision ResNet state dict:
    ``{"block", "blocks", "depth" (None if not a standard depth), "num_groups",
    "width_per_group"}`` (the last two are MODEL.RESNETS' for ResNeXt / wide ResNets)."""
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")})
                   for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in state
    description: dict[str, Any] = {"block": "bottleneck" if bottleneck else "basic",
                                   "blocks": blocks, "num_groups": 1, "width_per_group": 64}
    description["depth"] = DEPTHS.get((description["block"], blocks))
    if bottleneck:  # conv2 of the first block: [width, width / groups, 3, 3]
        width, per_group = tuple(state["layer1.0.conv2.weight"].shape[:2])
        description["num_groups"] = width // per_group
        description["width_per_group"] = per_group
    return description


def convert_torchvision_resnet(state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Rename a torchvision ResNet state dict to Detectron2's ResNet keys.

    Args:
        state: torchvision key -> Tensor.

    Returns:
        ``(converted, dropped)``: Detectron2 key -> float32 numpy array, and the dropped keys.
    """
    converted, dropped = {}, []
    for key, value in state.items():
        new_key = torchvision_to_detectron2_key(key)
        if new_key is None:
            dropped.append(key)
            continue
        converted[new_key] = value.detach().cpu().float().numpy()
    return converted, dropped


def _read_state_dict(path: str) -> dict[str, Any]:
    """The state dict in ``path`` (read weights-only), unwrapped from ``{"model": ...}`` or
    ``{"state_dict": ...}`` and from DDP's ``module.`` prefix."""
    import torch

    from retinanet_ext.checkpoint import safe_torch_load

    if not os.path.isfile(path):
        raise CommandError(f"{path} does not exist")
    loaded = safe_torch_load(path)
    for wrapper in ("model", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not loaded:
        raise CommandError(f"{path} holds no state dict (found {type(loaded).__name__})")
    not_tensors = [k for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CommandError(f"{path}: {not_tensors[0]!r} is not a tensor; expected a "
                           f"torchvision ResNet state dict")
    return {str(k).removeprefix("module."): v for k, v in loaded.items()}


def run(args: argparse.Namespace) -> int:
    from retinanet_ext.checkpoint import atomic_write

    if not args.output.endswith(".pkl"):
        raise CommandError(f"OUTPUT must end in .pkl (Detectron2's format for renamed "
                           f"weights), got {args.output}")
    if os.path.exists(args.output) and not args.overwrite:
        raise CommandError(f"{args.output} exists; pass --overwrite to replace it")
    state = _read_state_dict(args.input)
    if "conv1.weight" not in state or "layer1.0.conv1.weight" not in state:
        raise CommandError(f"{args.input} is not a torchvision ResNet checkpoint (no "
                           f"conv1.weight / layer1.0.conv1.weight among {sorted(state)[:4]})")
    resnet = describe_resnet(state)
    converted, dropped = convert_torchvision_resnet(state)
    data = {"model": converted, "__author__": "torchvision", "matching_heuristics": True}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    atomic_write(args.output, lambda f: pickle.dump(data, f, protocol=4))
    name = f"ResNet-{resnet['depth']}" if resnet["depth"] else "ResNet"
    print(f"converted {len(converted)} tensors of a torchvision {name} ({resnet['block']} "
          f"blocks {'-'.join(map(str, resnet['blocks']))}) to {args.output}; dropped "
          f"{len(dropped)} (fc.*, num_batches_tracked)")
    print(_config_hint(args.output, resnet))
    return 0


def _config_hint(output: str, resnet: dict[str, Any]) -> str:
    settings = [f"MODEL.WEIGHTS {output}"]
    if resnet["depth"]:
        settings.append(f"MODEL.RESNETS.DEPTH {resnet['depth']}")
    if resnet["block"] == "basic":
        settings.append("MODEL.RESNETS.RES2_OUT_CHANNELS 64")
    if (resnet["num_groups"], resnet["width_per_group"]) != (1, 64):
        settings += [f"MODEL.RESNETS.NUM_GROUPS {resnet['num_groups']}",
                     f"MODEL.RESNETS.WIDTH_PER_GROUP {resnet['width_per_group']}"]
    return ("use it with --config-file configs/finetune/retinanet_R50_FPN_torchvision.yaml "
            "(RGB input, torchvision's mean/std, STRIDE_IN_1X1 False) and "
            + " ".join(settings))
