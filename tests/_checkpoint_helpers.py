"""Checkpoint files for the safety tests: hostile ones (each would create a file when
unpickled), Detectron2 model-zoo and Caffe2 ImageNet ``.pkl`` files built from a model's
own weights, and a tiny model to load them into."""

from __future__ import annotations

import builtins
import os
import pickle
import re
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICK_CONFIG = str(REPO_ROOT / "configs" / "retinanet_R18_FPN_quick.yaml")
# ResNet-18 (BN), 32-channel FPN: built in ~0.3 s.
TINY_MODEL_OPTS = ["MODEL.FPN.OUT_CHANNELS", "32", "DATASETS.TEST", "()", "MODEL.DEVICE", "cpu"]


def load_tool(name: str):
    """``tools/<name>.py`` as a module (``tools`` is not a package; another distribution
    installs one of that name)."""
    import importlib.util
    import sys

    module_name = f"_tool_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name,
                                                      REPO_ROOT / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def build_tiny_model(seed: int) -> torch.nn.Module:
    from detectron2.modeling import build_model

    from retinanet_ext.engine import load_config

    torch.manual_seed(seed)
    return build_model(load_config(QUICK_CONFIG, TINY_MODEL_OPTS)).eval()


class RunsShell:
    """Unpickling calls ``os.system("touch SENTINEL")``."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


class RunsPython:
    """Unpickling calls ``exec(...)``, which creates SENTINEL."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.sentinel)!r}, 'w').close()",))


def write_hostile_pkl(path: Path, sentinel: Path, how: str = "shell", protocol: int = 2) -> Path:
    """A Detectron2 model-zoo-looking ``.pkl`` with a payload hidden among its weights.

    ``how``: "shell" (os.system), "python" (exec), "in_array" (the payload as an element
    of a numpy object array), "top" (the whole file is the payload).
    """
    payload = RunsPython(sentinel) if how == "python" else RunsShell(sentinel)
    weights: dict = {"backbone.bottom_up.stem.conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}
    if how == "in_array":
        weights["evil"] = np.array([payload, 1], dtype=object)
    elif how != "top":
        weights["evil"] = payload
    data = payload if how == "top" else {
        "model": weights, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


def write_hostile_pth(path: Path, sentinel: Path, how: str = "zip") -> Path:
    """A ``.pth`` whose unpickling would run a shell command.

    ``how``: "zip" (``torch.save``), "legacy" (torch's pre-1.6 format), "raw" (a plain
    pickle named ``.pth``).
    """
    data = {"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(64, 3, 7, 7)},
            "iteration": RunsShell(sentinel)}
    if how == "raw":
        path.write_bytes(pickle.dumps(data, protocol=4))
    else:
        torch.save(data, path, _use_new_zipfile_serialization=how == "zip")
    return path


def write_model_zoo_pkl(path: Path, model: torch.nn.Module, protocol: int = 2) -> Path:
    """The format of Detectron2's model zoo ``.pkl`` files: numpy arrays, ``__author__``,
    ``matching_heuristics``."""
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    data = {"model": weights, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


_BRANCHES = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}
_PARAMS = {"weight": "w", "bias": "b"}
_NORM_PARAMS = {"weight": "bn_s", "bias": "bn_b", "running_mean": "bn_rm", "running_var": "bn_riv"}


def caffe2_name(name: str) -> str | None:
    """The Caffe2/Detectron blob name of a Detectron2 ResNet parameter (``stem.conv1.weight``,
    ``res3.0.shortcut.norm.running_var``); the inverse of Detectron2's
    ``convert_basic_c2_names``. None for what Caffe2 files do not hold."""
    found = re.match(r"^(stem\.conv1|res(\d)\.(\d+)\.(\w+))(\.norm)?\.(\w+)$", name)
    if not found or found.group(6) == "num_batches_tracked":
        return None
    layer, stage, block, conv, norm, param = found.groups()
    if layer == "stem.conv1":
        prefix = "res_conv1" if norm else "conv1"
    else:
        prefix = f"res{stage}_{block}_{_BRANCHES[conv]}"
    return f"{prefix}_{(_NORM_PARAMS if norm else _PARAMS)[param]}"


def write_caffe2_backbone_pkl(path: Path, model: torch.nn.Module, *, blobs: bool = False,
                              protocol: int = 2) -> Path:
    """A Caffe2-style ImageNet backbone ``.pkl`` (like ``detectron2://ImageNetPretrained/
    MSRA/R-50.pkl``) holding ``model``'s ResNet weights under Caffe2 names, plus the
    ``_momentum`` blobs and classifier (``pred_w``) such files carry."""
    prefix = "backbone.bottom_up."
    weights = {}
    for key, value in model.state_dict().items():
        name = caffe2_name(key[len(prefix):]) if key.startswith(prefix) else None
        if name is not None:
            weights[name] = value.detach().numpy().copy()
            if name.endswith("_w"):
                weights[name + "_momentum"] = np.full_like(weights[name], 7.0)
    weights["pred_w"] = np.zeros((1000, 512), np.float32)
    weights["pred_b"] = np.zeros((1000,), np.float32)
    path.write_bytes(pickle.dumps({"blobs": weights} if blobs else weights, protocol=protocol))
    return path
