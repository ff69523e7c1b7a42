"""Bridges between Detectron2 (v0.6 from PyPI, or current GitHub source) and today's packages.

Applied once by ``import retinanet_ext`` (see :func:`apply`), before any Detectron2
submodule is imported. Each bridge checks for the real thing first and does nothing
where it is present:

* ``detectron2._C`` missing (the ``pb1-detectron2`` release ships no C++ sources):
  a stand-in module is installed so that ``import detectron2.modeling`` works.
  RetinaNet uses none of the compiled ops. Any op that needs them (rotated boxes,
  deformable convs, the fast COCO evaluator) raises :class:`MissingCompiledExtensionError`
  naming the op and how to get the extension.
* Pillow >= 10 removed ``Image.LINEAR`` (Detectron2 v0.6 uses it as a default
  argument): it is aliased to ``Image.BILINEAR``, its old meaning.
* setuptools >= 81 removed ``pkg_resources`` (``detectron2.model_zoo`` imports it
  for ``resource_filename``): a minimal module providing that function is installed.
* torch >= 2.6 loads checkpoints with ``weights_only=True``. A Detectron2 training
  checkpoint stores fvcore's LR schedule objects; those classes are allow-listed
  in ``torch.serialization`` so ``--resume`` works without unpickling anything else.
* Multi-process training on CPU: v0.6's ``launch`` asserts CUDA and uses NCCL, and
  ``create_ddp_model`` passes ``device_ids`` that DDP rejects for CPU modules.
  :func:`launch` uses gloo on CPU; ``create_ddp_model`` drops ``device_ids`` for CPU
  modules. On GPU both defer to Detectron2 unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from collections.abc import Callable
from datetime import timedelta
from typing import Any

logger = logging.getLogger(__name__)

EXTENSION_HELP = (
    "Detectron2's compiled C++ extension (detectron2._C) is not installed: this "
    "detectron2 came from the PyPI release without C++ sources. RetinaNet does not "
    "need it, but '{op}' does. To get it, install Detectron2 from its official source "
    "(needs internet access to GitHub and a C++ compiler):\n"
    "    pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'\n"
    "or run the project's set-up with RETINANET_EXT_DETECTRON2_ROUTE=source."
)

_applied = False
_has_compiled_extension: bool | None = None


class MissingCompiledExtensionError(RuntimeError):
    """An operation needs ``detectron2._C``, which this installation lacks."""

    def __init__(self, op: str) -> None:
        super().__init__(EXTENSION_HELP.format(op=op))
        self.op = op


class _MissingExtensionModule(types.ModuleType):
    """Stands in for ``detectron2._C``: every op raises a clear error when called.

    Attributes resolve (so ``hasattr`` and class references work at import time);
    only a call fails. The informational functions that ``collect_env`` calls
    answer truthfully that the extension is absent.
    """

    _info = {
        "get_compiler_version": lambda: "not built (detectron2._C missing)",
        "get_cuda_version": lambda: "not built (detectron2._C missing)",
        "has_cuda": lambda: False,
    }

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in self._info:
            return self._info[name]

        def missing(*args: Any, **kwargs: Any) -> Any:
            raise MissingCompiledExtensionError(f"detectron2._C.{name}")

        missing.__name__ = name
        return missing


def has_compiled_extension() -> bool:
    """Whether the real ``detectron2._C`` is importable (not our stand-in)."""
    if _has_compiled_extension is not None:
        return _has_compiled_extension
    module = sys.modules.get("detectron2._C")
    if module is not None:
        return not isinstance(module, _MissingExtensionModule)
    return importlib.util.find_spec("detectron2._C") is not None


def _bridge_compiled_extension() -> bool:
    """Install the stand-in for ``detectron2._C`` if the real one is missing.

    Returns whether the real extension is present.
    """
    global _has_compiled_extension
    import detectron2

    try:
        importlib.import_module("detectron2._C")
        _has_compiled_extension = True
        return True
    except ImportError:
        pass
    stand_in = _MissingExtensionModule(
        "detectron2._C", "Stand-in installed by retinanet_ext.compat: the extension is missing."
    )
    sys.modules["detectron2._C"] = stand_in
    detectron2._C = stand_in
    _has_compiled_extension = False
    return False


def _bridge_rotated_nms() -> None:
    """v0.6 calls rotated NMS through ``torch.ops.detectron2``, registered by ``_C``."""
    from detectron2 import layers

    # Not "from detectron2.layers import nms": the package exports a function of that name.
    nms = importlib.import_module("detectron2.layers.nms")

    def nms_rotated(boxes: Any, scores: Any, iou_threshold: float) -> Any:
        raise MissingCompiledExtensionError("detectron2.layers.nms_rotated")

    nms.nms_rotated = nms_rotated
    layers.nms_rotated = nms_rotated


def _bridge_pillow() -> None:
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR


def _bridge_pkg_resources() -> None:
    try:
        importlib.import_module("pkg_resources")
        return
    except ImportError:
        pass
    from importlib import resources

    def resource_filename(package: str, resource: str) -> str:
        return str(resources.files(package).joinpath(resource))

    module = types.ModuleType(
        "pkg_resources", "Minimal stand-in installed by retinanet_ext.compat (setuptools >= 81)."
    )
    module.resource_filename = resource_filename
    sys.modules["pkg_resources"] = module


def _bridge_torch_load() -> None:
    import torch

    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is None:  # torch < 2.4 loads full pickles by default
        return
    from fvcore.common import param_scheduler

    scheduler_classes = [
        value
        for value in vars(param_scheduler).values()
        if isinstance(value, type) and issubclass(value, param_scheduler.ParamScheduler)
    ]
    add_safe_globals(scheduler_classes)


def _bridge_ddp_on_cpu() -> None:
    from detectron2.engine import defaults

    original = defaults.create_ddp_model
    if getattr(original, "_retinanet_ext_bridge", False):
        return

    def create_ddp_model(model: Any, *, fp16_compression: bool = False, **kwargs: Any) -> Any:
        is_cpu_module = all(p.device.type == "cpu" for p in model.parameters())
        if is_cpu_module and "device_ids" not in kwargs:
            # DDP accepts device_ids only for single-device GPU modules.
            kwargs["device_ids"] = None
        return original(model, fp16_compression=fp16_compression, **kwargs)

    create_ddp_model._retinanet_ext_bridge = True
    create_ddp_model.__doc__ = original.__doc__
    defaults.create_ddp_model = create_ddp_model
    import detectron2.engine

    detectron2.engine.create_ddp_model = create_ddp_model


def apply() -> None:
    """Apply every bridge once. Idempotent; called by ``import retinanet_ext``."""
    global _applied
    if _applied:
        return
    _bridge_pillow()
    _bridge_pkg_resources()
    if not _bridge_compiled_extension():
        _bridge_rotated_nms()
    _bridge_torch_load()
    _bridge_ddp_on_cpu()
    _applied = True


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_processes_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
) -> None:
    import torch.distributed as dist
    from detectron2.utils import comm

    apply()  # spawned workers start from a fresh interpreter
    global_rank = machine_rank * num_processes_per_machine + local_rank
    dist.init_process_group(
        backend="gloo", init_method=dist_url, world_size=world_size, rank=global_rank,
        timeout=timeout,
    )
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(num_processes_per_machine)
    else:  # Detectron2 v0.6 sets the module global by hand
        num_machines = world_size // num_processes_per_machine
        for machine in range(num_machines):
            ranks = list(range(machine * num_processes_per_machine,
                               (machine + 1) * num_processes_per_machine))
            group = dist.new_group(ranks)
            if machine == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: tuple = (),
    timeout: timedelta = timedelta(minutes=30),
) -> None:
    """Detectron2's ``launch``, plus CPU processes over gloo when CUDA is absent.

    ``num_gpus_per_machine`` counts processes per machine; on a machine without CUDA
    each process trains on CPU. ``dist_url="auto"`` picks a free local port
    (single machine only).
    """
    import torch

    if torch.cuda.is_available():
        from detectron2.engine import launch as detectron2_launch

        detectron2_launch(main_func, num_gpus_per_machine, num_machines, machine_rank,
                          dist_url, args=args)
        return
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if dist_url == "auto" or dist_url is None:
        if num_machines != 1:
            raise ValueError("dist_url='auto' only works on one machine; give tcp://HOST:PORT")
        from detectron2.engine.launch import _find_free_port

        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    # Printed, not logged: loggers are set up inside the workers, not in this process.
    print(f"No CUDA: launching {num_gpus_per_machine} CPU processes per machine over gloo",
          file=sys.stderr, flush=True)
    import torch.multiprocessing as mp

    mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )
