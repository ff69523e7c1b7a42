"""Bridges between Detectron2 (v0.6 from PyPI, or current GitHub source) and today's packages.

``import retinanet_ext`` applies none of them. The import-time bridges are installed once
per interpreter by a **start-up hook** that the project's set-up writes into its virtual
environment (``./run`` calls ``python retinanet_ext/compat.py --install-startup-hook``):
a ``retinanet_ext_bridges.pth`` file in site-packages that executes this file and calls
:func:`apply` when Python starts, before any user code. So in the project's venv a user's
own Detectron2 script works whatever it imports first, and behaves the same with or
without ``import retinanet_ext``. Elsewhere, call :func:`apply` before Detectron2 is
imported (this module imports only the standard library at its top). Each bridge checks
for the real thing first and does nothing where it is present; each is as narrow as the
gap. Listed, with the versions they cover and the private names they touch, in
``docs/compat.md``:

* ``detectron2._C`` missing (the ``pb1-detectron2`` release ships no C++ sources): the
  import of ``detectron2._C``, when no finder has the real one, gets a stand-in module whose
  ops raise :class:`MissingCompiledExtensionError` naming the op and how to get the
  extension; v0.6's ``nms_rotated`` (which reaches the extension through
  ``torch.ops.detectron2``) is replaced, right after ``detectron2.layers.nms`` executes,
  by one that raises the same. RetinaNet uses none of the compiled ops.
* setuptools >= 81 removed ``pkg_resources``, which ``detectron2.model_zoo`` imports for
  ``resource_filename`` alone: a stand-in ``pkg_resources`` with that one function sits in
  ``sys.modules`` only while ``detectron2.model_zoo.model_zoo`` executes, and only when no
  ``pkg_resources`` can be found.
* Pillow >= 10 removed ``Image.LINEAR``, which v0.6's ``detectron2.data.transforms.transform``
  uses as a default argument: the name is aliased to ``Image.BILINEAR`` (its old meaning)
  only while that module executes, and removed again.
* ``torch.jit.script is deprecated`` FutureWarnings: ignored while the two modules that
  script functions at import time execute (``fvcore.nn.focal_loss``,
  ``detectron2.modeling.box_regression``); any other warning still shows.
* Multi-process training on CPU (:func:`launch`, scoped to that call): v0.6's ``launch``
  asserts CUDA and uses NCCL, so CPU processes are started here over gloo. Inside those
  worker processes only, ``create_ddp_model`` passes no ``device_ids`` and the per-machine
  process group is made by :func:`_create_local_process_group` (v0.6: the private
  ``comm._LOCAL_PROCESS_GROUP``).
* Not bridged here: torch >= 2.6 loading checkpoints ``weights_only``; the allow-list is
  scoped to each load by :func:`retinanet_ext.checkpoint.safe_torch_load`.
"""

from __future__ import annotations

# The venv's start-up hook executes this module at every Python start: only what apply()
# needs is imported here; the rest inside the functions that use it.
import contextlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types
import warnings
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from datetime import timedelta
    from pathlib import Path

EXTENSION_HELP = (
    "Detectron2's compiled C++ extension (detectron2._C) is not installed: this "
    "detectron2 came from the PyPI release without C++ sources. RetinaNet does not "
    "need it, but '{op}' does. To get it, install Detectron2 from its official source "
    "(needs internet access to GitHub and a C++ compiler):\n"
    "    pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'\n"
    "or run the project's set-up with RETINANET_EXT_DETECTRON2_ROUTE=source, or with "
    "RETINANET_EXT_DETECTRON2_WHEEL=PATH naming a Detectron2 wheel you built from source."
)

#: The start-up hook's file in site-packages (a .pth file: Python's ``site`` runs its line).
STARTUP_HOOK_NAME = "retinanet_ext_bridges.pth"
#: Set on every object this module puts in place, so a check never mistakes it for the real one.
_MARK = "__retinanet_ext_bridge__"


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


class _StandInLoader:
    """Makes the ``detectron2._C`` stand-in when no finder has the real extension."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _MissingExtensionModule(
            spec.name, "Stand-in from retinanet_ext.compat: the compiled extension is missing.")
        setattr(module, _MARK, True)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def has_compiled_extension() -> bool:
    """Whether the real ``detectron2._C`` is importable (not the stand-in)."""
    module = sys.modules.get("detectron2._C")
    if module is not None:
        return not getattr(module, _MARK, False)
    if importlib.util.find_spec("detectron2") is None:
        return False
    return _real_spec("detectron2._C") is not None


def describe_detectron2() -> str:
    """One line for logs: Detectron2's version, distribution, location and ``_C`` state."""
    import json
    import urllib.parse
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


def _real_spec(fullname: str, path: Any = None) -> importlib.machinery.ModuleSpec | None:
    """The spec the other finders give for ``fullname`` (never this module's own)."""
    if path is None and "." in fullname:
        parent = sys.modules.get(fullname.rpartition(".")[0])
        path = getattr(parent, "__path__", None)
        if path is None:  # parent not imported yet: ask without importing it
            parent_spec = importlib.util.find_spec(fullname.rpartition(".")[0])
            path = getattr(parent_spec, "submodule_search_locations", None)
    for finder in sys.meta_path:
        if getattr(finder, _MARK, False) or not hasattr(finder, "find_spec"):
            continue
        spec = finder.find_spec(fullname, path, None)
        if spec is not None:
            return spec
    return None


class _BridgedLoader:
    """Wraps a module's loader: its code executes inside ``bridge()``, then ``after(module)``."""

    def __init__(self, loader: Any, bridge: Callable[[], Any] | None,
                 after: Callable[[types.ModuleType], None] | None) -> None:
        self._loader = loader
        self._bridge = bridge or contextlib.nullcontext
        self._after = after

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        with self._bridge():
            self._loader.exec_module(module)
        if self._after is not None:
            self._after(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ...
        return getattr(self._loader, name)


class _ImportBridges:
    """A meta-path finder that answers only for the modules a bridge is scoped to.

    It takes the spec the other finders give and wraps its loader, so the bridge (a
    context manager) is active exactly while that module's code executes, and the
    ``after`` step runs once it has. For a module in ``fallbacks`` that no other finder
    has, it gives the fallback's spec (the ``detectron2._C`` stand-in).
    """

    def __init__(self, bridges: dict[str, Callable[[], Any]],
                 after: dict[str, Callable[[types.ModuleType], None]],
                 fallbacks: dict[str, _StandInLoader]) -> None:
        self.bridges = bridges
        self.after = after
        self.fallbacks = fallbacks
        setattr(self, _MARK, True)

    def find_spec(
        self, fullname: str, path: Any = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.bridges and fullname not in self.after \
                and fullname not in self.fallbacks:
            return None
        spec = _real_spec(fullname, path)
        if spec is None:
            loader = self.fallbacks.get(fullname)
            return None if loader is None else importlib.machinery.ModuleSpec(fullname, loader)
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _BridgedLoader(spec.loader, self.bridges.get(fullname),
                                         self.after.get(fullname))
        return spec


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


def _raise_on_rotated_nms(nms_module: types.ModuleType) -> None:
    """v0.6 calls rotated NMS through ``torch.ops.detectron2``, registered by ``_C``: where
    ``_C`` is the stand-in, ``nms_rotated`` raises the stand-in's clear error instead."""
    if has_compiled_extension():
        return

    def nms_rotated(boxes: Any, scores: Any, iou_threshold: float) -> Any:
        raise MissingCompiledExtensionError("detectron2.layers.nms_rotated")

    setattr(nms_rotated, _MARK, True)
    nms_module.nms_rotated = nms_rotated


IMPORT_BRIDGES = _ImportBridges(
    bridges={
        "detectron2.model_zoo.model_zoo": _pkg_resources_stand_in,
        "detectron2.data.transforms.transform": _pillow_linear_alias,
        "fvcore.nn.focal_loss": _quiet_jit_script_deprecation,
        "detectron2.modeling.box_regression": _quiet_jit_script_deprecation,
    },
    after={"detectron2.layers.nms": _raise_on_rotated_nms},
    fallbacks={"detectron2._C": _StandInLoader()},
)


def bridges_installed() -> bool:
    """Whether this interpreter has the import-time bridges (from the start-up hook or
    :func:`apply`)."""
    return any(getattr(finder, _MARK, False) for finder in sys.meta_path)


def apply() -> None:
    """Install the import-time bridges in this interpreter. Idempotent.

    The project's venv does this at start-up (:func:`install_startup_hook`); call it
    yourself only elsewhere, before Detectron2 is imported: a bridge acts while its module
    imports, so a module imported before this call is left as it is.
    """
    if not bridges_installed():
        sys.meta_path.insert(0, IMPORT_BRIDGES)


def missing_bridges_help(error: BaseException) -> str | None:
    """What to do when importing Detectron2 failed for want of the bridges, else None."""
    text = str(error)
    if not ("_C" in text or "LINEAR" in text or "pkg_resources" in text) or bridges_installed():
        return None
    return (f"importing Detectron2 failed ({type(error).__name__}: {text}): this Detectron2 "
            "needs retinanet_ext's compatibility bridges, which are installed into the "
            "project's venv by ./run. In another environment, run once:\n"
            f"    {sys.executable} {os.path.realpath(__file__)} --install-startup-hook")


def install_startup_hook(site_packages: str | os.PathLike | None = None) -> Path:
    """Write the start-up hook (:data:`STARTUP_HOOK_NAME`) into ``site_packages`` (this
    interpreter's purelib by default). At every start of that Python it finds the installed
    ``retinanet_ext`` without importing it, executes its ``compat.py`` as
    ``retinanet_ext.compat`` (one module object, which the package reuses once it imports)
    and calls :func:`apply`; nothing else runs, and it does nothing where the package is
    gone. Returns the hook's path."""
    import sysconfig
    from pathlib import Path

    folder = Path(site_packages or sysconfig.get_paths()["purelib"])
    line = (  # one line: site runs a .pth line that starts with "import"
        "import os, sys, importlib.util as u; "
        "r = 'retinanet_ext.compat' not in sys.modules and u.find_spec('retinanet_ext'); "
        "p = r and os.path.join(list(r.submodule_search_locations)[0], 'compat.py'); "
        "s = p and os.path.isfile(p) and u.spec_from_file_location('retinanet_ext.compat', p); "
        "m = s and u.module_from_spec(s); "
        "s and (sys.modules.__setitem__('retinanet_ext.compat', m), s.loader.exec_module(m), "
        "m.apply())"
    )
    hook = folder / STARTUP_HOOK_NAME
    hook.write_text("# retinanet_ext: Detectron2 compatibility bridges (retinanet_ext/compat.py; "
                    "docs/compat.md). Written by the project's set-up.\n" + line + "\n")
    return hook


class PrivateName(NamedTuple):
    """A private name of Detectron2, fvcore or numpy that the project relies on."""

    name: str  #: dotted, as its owner spells it
    used_by: str  #: the project's module that touches it
    why: str  #: why no public hook serves
    present: Callable[[], bool]  #: whether this installation still has it, in the used form


def _source_contains(owner: Any, *snippets: str) -> bool:
    """Whether ``owner``'s source (a function or class) holds every snippet, in that order."""
    import inspect

    source = inspect.getsource(owner)
    positions = [source.find(snippet) for snippet in snippets]
    return -1 not in positions and positions == sorted(positions)


def _has_local_process_group_setter() -> bool:
    from detectron2.utils import comm

    return hasattr(comm, "create_local_process_group") or hasattr(comm, "_LOCAL_PROCESS_GROUP")


def _fvcore_reads_files_through_load_file() -> bool:
    from fvcore.common.checkpoint import Checkpointer

    return hasattr(Checkpointer, "_load_file") and _source_contains(
        Checkpointer.load, "self._load_file(")


def _trainer_builds_hooks_after_checkpointer() -> bool:
    from detectron2.engine import DefaultTrainer

    return _source_contains(DefaultTrainer.__init__, "self.checkpointer =", "self.build_hooks()")


def _numpy_pickle_names() -> bool:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    return hasattr(multiarray, "_reconstruct") and hasattr(numeric, "_frombuffer")


def _extension_module_name() -> bool:
    # detectron2.layers imports its ops from detectron2._C: the real extension or, where it is
    # missing, the stand-in answers for that name; under another name neither would be loaded.
    importlib.import_module("detectron2.layers")
    return sys.modules.get("detectron2._C") is not None


#: Every private name the project touches, in one place (docs/compat.md is its page; a test on
#: each Detectron2 build checks each ``present``).
PRIVATE_NAMES: tuple[PrivateName, ...] = (
    PrivateName(
        "detectron2._C", "retinanet_ext.compat",
        "Detectron2's compiled extension; where PyPI's v0.6 lacks it, the import-time bridge "
        "stands in for it so that detectron2.modeling imports (RetinaNet uses no compiled op)",
        _extension_module_name),
    PrivateName(
        "detectron2.utils.comm._LOCAL_PROCESS_GROUP", "retinanet_ext.compat (launch on CPU)",
        "v0.6 has no setter for the per-machine process group (current Detectron2's public "
        "comm.create_local_process_group is used where it exists)",
        _has_local_process_group_setter),
    PrivateName(
        "fvcore.common.checkpoint.Checkpointer._load_file", "retinanet_ext.checkpoint",
        "fvcore's documented override point for reading one checkpoint file ('Can be "
        "overwritten by subclasses to support different formats'): the safe reader goes there",
        _fvcore_reads_files_through_load_file),
    PrivateName(
        "detectron2.engine.DefaultTrainer.__init__ (sets checkpointer before build_hooks)",
        "retinanet_ext.engine.trainer",
        "Detectron2 has no build_checkpointer hook; the project's checkpointer replaces "
        "Detectron2's in build_hooks, before PeriodicCheckpointer takes it",
        _trainer_builds_hooks_after_checkpointer),
    PrivateName(
        "numpy._core.multiarray._reconstruct, numpy._core.numeric._frombuffer",
        "retinanet_ext.checkpoint",
        "the names numpy's own pickles reference: the safe .pkl reader allows exactly these",
        _numpy_pickle_names),
)


def missing_private_names() -> list[str]:
    """The entries of :data:`PRIVATE_NAMES` this installation lacks (empty when all hold)."""
    return [entry.name for entry in PRIVATE_NAMES if not entry.present()]


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 free at the time of the call (another process may take it)."""
    import socket

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
    timeout: timedelta | None = None,
) -> None:
    """Detectron2's ``launch``, plus CPU processes over gloo when CUDA is absent.

    ``num_gpus_per_machine`` counts processes per machine; on a machine without CUDA
    each process trains on CPU. ``dist_url="auto"`` picks a free local port
    (single machine only). ``timeout`` (the process group's): 30 minutes by default.
    """
    from datetime import timedelta

    import torch

    if timeout is None:
        timeout = timedelta(minutes=30)

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


if __name__ == "__main__":  # python retinanet_ext/compat.py --install-startup-hook [SITE_PACKAGES]
    if len(sys.argv) not in (2, 3) or sys.argv[1] != "--install-startup-hook":
        raise SystemExit("usage: python retinanet_ext/compat.py --install-startup-hook "
                         "[SITE_PACKAGES]")
    print(f"wrote {install_startup_hook(sys.argv[2] if len(sys.argv) == 3 else None)}")
