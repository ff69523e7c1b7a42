"""Bridges between Detectron2 (v0.6 from PyPI, or current GitHub source) and today's packages.

Applied once by ``import retinanet_ext`` (see :func:`apply`), before any Detectron2
submodule is imported. Each bridge checks for the real thing first and does nothing
where it is present, and each is as narrow as the gap:

* ``detectron2._C`` missing (the ``pb1-detectron2`` release ships no C++ sources):
  a stand-in module is installed so that ``import detectron2.modeling`` works, and
  v0.6's ``nms_rotated`` (which reaches the extension through ``torch.ops.detectron2``)
  is replaced by one that raises. RetinaNet uses none of the compiled ops. Any op that
  needs them (rotated boxes, deformable convs, the fast COCO evaluator) raises
  :class:`MissingCompiledExtensionError` naming the op and how to get the extension.
  Inert where the real extension imports.
* setuptools >= 81 removed ``pkg_resources``, which ``detectron2.model_zoo`` imports
  for ``resource_filename`` alone: a stand-in ``pkg_resources`` with that one function
  sits in ``sys.modules`` only while ``detectron2.model_zoo.model_zoo`` executes
  (:class:`_ImportBridges`), and only when no ``pkg_resources`` can be found; the
  process is left without a ``pkg_resources``. Cost: one dictionary look-up per import.
* Pillow >= 10 removed ``Image.LINEAR``, which v0.6's ``detectron2.data.transforms.transform``
  uses as a default argument: the name is aliased to ``Image.BILINEAR`` (its old
  meaning) only while that module executes, and removed again.
* ``torch.jit.script is deprecated`` FutureWarnings: ignored while the two modules that
  script functions at import time execute (``fvcore.nn.focal_loss``,
  ``detectron2.modeling.box_regression``), so every command does not start with them;
  any other warning, including ``torch.jit.script``'s for other callers, still shows.
* Not bridged here: torch >= 2.6 loading checkpoints ``weights_only``. The allow-list a
  Detectron2 training checkpoint needs (fvcore's LR schedules) is scoped to each load by
  :func:`retinanet_ext.checkpoint.safe_torch_load`; a process-wide one would be removed
  by torch's ``safe_globals`` context manager on its first exit anyway.
* Multi-process training on CPU (:func:`launch`): v0.6's ``launch`` asserts CUDA and
  uses NCCL, so CPU processes are started here over gloo. Inside those worker
  processes only, ``create_ddp_model`` passes no ``device_ids`` (DDP rejects them for
  CPU modules), and the per-machine process group is made by
  :func:`_create_local_process_group`: the public ``comm.create_local_process_group``
  where it exists, else v0.6's module global ``comm._LOCAL_PROCESS_GROUP``, the one
  private Detectron2 name this package sets. On GPU, Detectron2's ``launch`` runs unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import socket
import sys
import types
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

logger = logging.getLogger(__name__)

EXTENSION_HELP = (
    "Detectron2's compiled C++ extension (detectron2._C) is not installed: this "
    "detectron2 came from the PyPI release without C++ sources. RetinaNet does not "
    "need it, but '{op}' does. To get it, install Detectron2 from its official source "
    "(needs internet access to GitHub and a C++ compiler):\n"
    "    pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'\n"
    "or run the project's set-up with RETINANET_EXT_DETECTRON2_ROUTE=source, or with "
    "RETINANET_EXT_DETECTRON2_WHEEL=PATH naming a Detectron2 wheel you built from source."
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


def describe_detectron2() -> str:
    """One line for logs: Detectron2's version, distribution, location and ``_C`` state."""
    from importlib import metadata

    import detectron2

    names = sorted(set(metadata.packages_distributions().get("detectron2", [])))
    distributions = ", ".join(f"distribution {name} {metadata.version(name)}" for name in names)
    for name in names:
        url = json.loads(metadata.distribution(name).read_text("direct_url.json") or "{}")
        path = urllib.parse.unquote(url.get("url", "").removeprefix("file://"))
        if path != url.get("url") and os.path.isfile(path):  # a wheel that is still there
            distributions += f", installed from {path}"
    if has_compiled_extension():
        from detectron2 import _C

        extension = f"detectron2._C present (built with {_C.get_compiler_version()})"
    else:
        extension = "detectron2._C missing (retinanet_ext.compat's stand-in)"
    return (
        f"detectron2 {detectron2.__version__} ({distributions or 'no distribution metadata'}) "
        f"at {os.path.dirname(detectron2.__file__)}; {extension}"
    )


class _BridgedLoader(importlib.abc.Loader):
    """Wraps a module's loader so that its code executes inside ``bridge()``."""

    def __init__(self, loader: importlib.abc.Loader, bridge: Callable[[], Any]) -> None:
        self._loader = loader
        self._bridge = bridge

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        with self._bridge():
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ...
        return getattr(self._loader, name)


class _ImportBridges(importlib.abc.MetaPathFinder):
    """A meta-path finder that answers only for the modules a bridge is scoped to.

    It takes the spec the other finders give and wraps its loader, so the bridge (a
    context manager) is active exactly while that module's code executes.
    """

    def __init__(self, bridges: dict[str, Callable[[], Any]]) -> None:
        self.bridges = bridges

    def find_spec(
        self, fullname: str, path: Any = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        bridge = self.bridges.get(fullname)
        if bridge is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _BridgedLoader(spec.loader, bridge)
                return spec
        return None


def _resource_filename(package: str, resource: str) -> str:
    """``pkg_resources.resource_filename`` for a package on disk (all model_zoo needs)."""
    from importlib import resources

    return str(resources.files(package).joinpath(resource))


@contextlib.contextmanager
def _pkg_resources_stand_in() -> Iterator[None]:
    """A ``pkg_resources`` with ``resource_filename`` only, while no real one exists."""
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        yield
        return
    stand_in = types.ModuleType(
        "pkg_resources", "Stand-in from retinanet_ext.compat while detectron2.model_zoo imports."
    )
    stand_in.resource_filename = _resource_filename
    sys.modules["pkg_resources"] = stand_in
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]


@contextlib.contextmanager
def _pillow_linear_alias() -> Iterator[None]:
    """``Image.LINEAR`` (removed in Pillow 10) as ``Image.BILINEAR``, its old meaning."""
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        yield
        return
    Image.LINEAR = Image.BILINEAR
    try:
        yield
    finally:
        del Image.LINEAR


@contextlib.contextmanager
def _quiet_jit_script_deprecation() -> Iterator[None]:
    """Ignore torch's "`torch.jit.script` is deprecated" FutureWarning, nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
        )
        yield


IMPORT_BRIDGES = _ImportBridges(
    {
        "detectron2.model_zoo.model_zoo": _pkg_resources_stand_in,
        "detectron2.data.transforms.transform": _pillow_linear_alias,
        "fvcore.nn.focal_loss": _quiet_jit_script_deprecation,
        "detectron2.modeling.box_regression": _quiet_jit_script_deprecation,
    }
)


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


def apply() -> None:
    """Apply every bridge once. Idempotent; called by ``import retinanet_ext``."""
    global _applied
    if _applied:
        return
    if IMPORT_BRIDGES not in sys.meta_path:
        sys.meta_path.insert(0, IMPORT_BRIDGES)
    if not _bridge_compiled_extension():
        _bridge_rotated_nms()
    _applied = True


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 free at the time of the call (another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _create_local_process_group(num_processes_per_machine: int, machine_rank: int) -> None:
    """Detectron2's per-machine process group, which ``comm.get_local_rank/size`` read.

    Current Detectron2 makes it with the public ``comm.create_local_process_group``.
    v0.6 has no setter (its ``launch`` assigns the module global), so this adapter
    assigns ``comm._LOCAL_PROCESS_GROUP`` the same way. Every rank must call it: each
    ``new_group`` is collective.
    """
    import torch.distributed as dist
    from detectron2.utils import comm

    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(num_processes_per_machine)
        return
    num_machines = dist.get_world_size() // num_processes_per_machine
    for machine in range(num_machines):
        first = machine * num_processes_per_machine
        group = dist.new_group(list(range(first, first + num_processes_per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def _create_ddp_model_without_device_ids() -> None:
    """In a CPU worker of :func:`launch`: ``create_ddp_model`` passes no ``device_ids``.

    Detectron2 passes ``device_ids=[local_rank]``, which DDP accepts only for a module
    on one GPU. Replaced in the worker processes only, under both names callers use
    (``detectron2.engine.defaults``, where ``DefaultTrainer`` looks it up, and
    ``detectron2.engine``).
    """
    import detectron2.engine
    from detectron2.engine import defaults

    original = defaults.create_ddp_model

    def create_ddp_model(model: Any, *, fp16_compression: bool = False, **kwargs: Any) -> Any:
        kwargs.setdefault("device_ids", None)
        return original(model, fp16_compression=fp16_compression, **kwargs)

    create_ddp_model.__doc__ = original.__doc__
    defaults.create_ddp_model = create_ddp_model
    detectron2.engine.create_ddp_model = create_ddp_model


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
    _create_local_process_group(num_processes_per_machine, machine_rank)
    _create_ddp_model_without_device_ids()
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
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
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
