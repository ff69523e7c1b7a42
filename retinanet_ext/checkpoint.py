"""Reading and writing checkpoints: nothing in a file is executed, nothing written is lost.

Reading (every path: ``MODEL.WEIGHTS`` for training and ``--eval-only``, ``--resume``, the
Predictor and ``export``, URLs after their download):

* ``.pkl`` (Detectron2's model zoo, Caffe2/Detectron ImageNet backbones): a restricted
  unpickler that builds only dicts, lists, tuples, sets, strings, bytes, numbers and numpy
  arrays, dtypes and scalars (:func:`pickle_allowed_globals`). Anything else is refused
  with :class:`UnsafeCheckpointError` naming the file and the global it asked for.
* ``.pth``, ``.pt``, ``.pyth`` and anything else: ``torch.load(weights_only=True)`` with an
  explicit allow-list (:func:`torch_allowed_globals`: fvcore's LR schedules, numpy arrays),
  never a fallback to full unpickling.

Writing: every checkpoint and ``last_checkpoint`` goes to a temporary file in the same
folder, is flushed and fsync'ed, then renamed over the target (:func:`atomic_write`), so a
kill at any moment leaves the old file or the new one. Weights that are not finite are
never saved. ``--resume`` skips a damaged newest checkpoint (with a warning) and takes the
previous good one; a hostile one stops the run.

:class:`RetinaNetExtCheckpointer` is the one adapter to Detectron2's checkpointer: a
:class:`~detectron2.checkpoint.DetectionCheckpointer` whose ``_load_file`` (fvcore's
documented hook for reading a file) reads safely; it is used only through the public
``load``, ``resume_or_load`` and ``save``. Detectron2's own ``_load_file`` differs between
v0.6 and the current source (which asserts that it runs inside ``load``); it is never called.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import logging
import os
import pickle
import re
import secrets
import zipfile
from collections.abc import Callable, Mapping
from typing import IO, Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = [
    "EMA_CHECKPOINT_KEY",
    "CheckpointError",
    "DamagedCheckpointError",
    "RetinaNetExtCheckpointer",
    "UnsafeCheckpointError",
    "atomic_write",
    "ema_model_weights",
    "load_weights",
    "read_checkpoint",
    "safe_pickle_load",
    "safe_torch_load",
    "use_ema_weights",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
#: Periodic checkpoints written by Detectron2's PeriodicCheckpointer hook.
PERIODIC_CHECKPOINT = re.compile(r"^model_(\d{7})\.pth$")
FINAL_CHECKPOINT = "model_final.pth"
#: Temporary files of :func:`atomic_write`: ``.<name>.<pid>.<8 hex>.tmp``.
TEMPORARY_FILE = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or holds no weights of this model."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file is empty, truncated or not a checkpoint at all."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asks for code to run while it is read (a global outside the allow-list)."""


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` restricted to what pickle protocols <= 2 use it for (bytes)."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


def _numpy_modules() -> tuple[Any, Any]:
    try:  # numpy >= 2 ("numpy.core" is a deprecated alias there)
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    return multiarray, numeric


def pickle_allowed_globals() -> dict[tuple[str, str], Any]:
    """What a ``.pkl`` checkpoint may reference: ``(module, name) -> object``.

    Exactly what pickles of numpy arrays, dtypes and scalars (every protocol, Python 2
    and 3, numpy 1 and 2) and of plain containers reference; nothing that runs code.
    """
    multiarray, numeric = _numpy_modules()
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,  # bytes in protocol 0-2 pickles
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer  # protocol 5
    for module in ("builtins", "__builtin__"):
        for value in (set, frozenset, complex, bytearray, bytes, slice, range):
            allowed[(module, value.__name__)] = value
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds plain data only; :meth:`find_class` refuses every other global."""

    def __init__(self, file: IO[bytes], path: str) -> None:
        super().__init__(file, encoding="latin1")  # Python 2 pickles, as Detectron2 reads them
        self.path = path
        self.allowed = pickle_allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise UnsafeCheckpointError(_refusal(self.path, f"{module}.{name}"))
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not part of a plain pickle")


def _refusal(path: str, global_name: str) -> str:
    return (f"checkpoint {path} is refused: reading it would call {global_name}, and a "
            f"checkpoint may hold only tensors, numpy arrays and plain data (nothing in a "
            f"checkpoint is executed)")


def safe_pickle_load(path: str) -> Any:
    """Unpickle ``path`` allowing only plain data and numpy arrays (see module docstring).

    Raises:
        UnsafeCheckpointError: the pickle references any other global (names it).
        DamagedCheckpointError: the file is empty, truncated or not a pickle.
    """
    from detectron2.utils.file_io import PathManager

    try:
        with PathManager.open(path, "rb") as f:
            return _RestrictedUnpickler(f, path).load()
    except UnsafeCheckpointError:
        raise
    except Exception as error:  # pickle raises many types for a damaged file
        raise DamagedCheckpointError(
            f"checkpoint {path} could not be read: {_describe(error)}") from error


def torch_allowed_globals() -> list[Any]:
    """The allow-list of ``torch.load(weights_only=True)`` beyond torch's own defaults.

    fvcore's LR schedule classes (Detectron2's trainer checkpoints may hold them) and
    numpy arrays, dtypes and scalars (Detectron2 loads state dicts of numpy arrays).
    """
    from fvcore.common import param_scheduler

    schedulers = [value for value in vars(param_scheduler).values()
                  if isinstance(value, type) and issubclass(value, param_scheduler.ParamScheduler)]
    multiarray, _ = _numpy_modules()
    dtypes = [getattr(np.dtypes, name) for name in getattr(np.dtypes, "__all__", [])]
    return [*schedulers, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar,
            *[d for d in dtypes if isinstance(d, type)]]


_TORCH_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def safe_torch_load(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` with :func:`torch_allowed_globals` allowed.

    Raises:
        UnsafeCheckpointError: the file references a global outside the allow-list.
        DamagedCheckpointError: it is empty, truncated or not a torch checkpoint.
    """
    from detectron2.utils.file_io import PathManager

    try:
        with torch.serialization.safe_globals(torch_allowed_globals()):
            with PathManager.open(path, "rb") as f:
                return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        found = _TORCH_GLOBAL.search(str(error))
        if found:
            raise UnsafeCheckpointError(_refusal(path, found.group(1))) from error
        _refuse_if_hostile_pickle(path)
        raise DamagedCheckpointError(
            f"checkpoint {path} could not be read: {_describe(error)}") from error


class _ProbeUnpickler(_RestrictedUnpickler):
    """Tells a hostile plain pickle from a damaged file: torch's tensor plumbing is replaced
    by an inert stub (nothing runs), any other global outside the allow-list is refused."""

    TENSOR_PLUMBING = {
        ("torch.storage", "_load_from_bytes"), ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.TENSOR_PLUMBING:
            return _inert
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        return None


def _inert(*args: Any, **kwargs: Any) -> None:
    return None


def _refuse_if_hostile_pickle(path: str) -> None:
    """A plain pickle named ``.pth`` fails torch's reader before it reaches a global; read it
    with :class:`_ProbeUnpickler` (which runs nothing) to tell hostile from damaged.

    Raises:
        UnsafeCheckpointError: it references a global outside the allow-list.
    """
    if not os.path.isfile(path) or zipfile.is_zipfile(path):
        return
    with open(path, "rb") as f:
        while f.read(1):  # torch's legacy format is several pickles in a row
            f.seek(-1, os.SEEK_CUR)
            try:
                _ProbeUnpickler(f, path).load()
            except UnsafeCheckpointError:
                raise
            except Exception:  # damaged: what torch said stands
                return


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _read_pkl(path: str) -> dict[str, Any]:
    """Detectron2's reading of ``.pkl`` files (``DetectionCheckpointer._load_file``), safely."""
    data = safe_pickle_load(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path} holds no model weights "
                              f"(a {type(data).__name__}, not a dict)")
    if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
        logger.info("Reading a file from '%s'", data["__author__"])
        return data
    if "blobs" in data:  # Caffe2 / Detectron detection models; ImageNet ones have no "blobs"
        data = data["blobs"]
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path} holds no model weights")
    weights = {k: v for k, v in data.items() if not str(k).endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}


def _read_pyth(path: str) -> dict[str, Any]:
    """pycls checkpoints (``.pyth``), read as Detectron2 reads them, weights-only."""
    data = safe_torch_load(path)
    if not isinstance(data, dict) or not isinstance(data.get("model_state"), dict):
        raise CheckpointError(f"checkpoint {path} holds no model weights: a pycls .pyth "
                              f"checkpoint must contain 'model_state'")
    state = {k: v for k, v in data["model_state"].items()
             if not str(k).endswith("num_batches_tracked")}
    return {"model": state, "__author__": "pycls", "matching_heuristics": True}


def read_checkpoint(path: str) -> dict[str, Any]:
    """Read a local checkpoint file into Detectron2's ``{"model": state_dict, ...}`` form.

    ``.pkl``: Detectron2 model zoo (kept as is) or Caffe2 weights (``matching_heuristics``
    set, so Detectron2 renames them on load); ``.pyth``: pycls; anything else: a torch file,
    a bare state dict becoming ``{"model": it}``. The result is not checked against a model.

    Raises:
        UnsafeCheckpointError, DamagedCheckpointError, CheckpointError (no weights).
    """
    if path.endswith(".pkl"):
        return _read_pkl(path)
    if path.endswith(".pyth"):
        return _read_pyth(path)
    loaded = safe_torch_load(path)
    if not isinstance(loaded, dict):
        raise CheckpointError(f"checkpoint {path} holds no model weights "
                              f"(a {type(loaded).__name__}, not a dict)")
    return loaded if "model" in loaded else {"model": loaded}


def check_model_entry(checkpoint: dict[str, Any], model: torch.nn.Module, path: str) -> None:
    """Refuse a checkpoint whose ``"model"`` entry is empty, holds something other than
    tensors/arrays, or names none of ``model``'s parameters (it would leave the model at
    its random initialisation without a word)."""
    state = checkpoint.get("model")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"checkpoint {path} holds no model weights")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor | np.ndarray):
            raise CheckpointError(f"checkpoint {path} holds a {type(value).__name__} under "
                                  f"model weight {key!r}, not a tensor")
    if checkpoint.get("matching_heuristics", False):
        return  # renamed by Detectron2's heuristics on load (model zoo, Caffe2)
    model_keys = set(model.state_dict())
    if not any(str(key).removeprefix("module.") in model_keys for key in state):
        raise CheckpointError(
            f"checkpoint {path} holds none of this model's parameters (e.g. it has "
            f"{sorted(map(str, state))[:3]}, the model wants {sorted(model_keys)[:3]})")


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` so that a crash leaves either its old content or the new one.

    ``write(f)`` fills a temporary file in the same folder, which is flushed, fsync'ed
    and renamed over ``path``; the folder is fsync'ed so the rename survives a power cut.
    """
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(
        folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # not every file system lets a folder be fsync'ed
        folder_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)


def nonfinite_weights(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state_dict`` holding NaN or Inf."""
    return [key for key, value in state_dict.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point()
            and not bool(torch.isfinite(value).all())]


def _checkpoint_order(name: str) -> float | None:
    """Sort key of a checkpoint file name: its iteration; the final one last; else None."""
    if name == FINAL_CHECKPOINT:
        return float("inf")
    found = PERIODIC_CHECKPOINT.match(name)
    return float(found.group(1)) if found else None


# ---------------------------------------------------------------------------------------
# The checkpointer
# ---------------------------------------------------------------------------------------


class RetinaNetExtCheckpointer(DetectionCheckpointer):
    """Detectron2's ``DetectionCheckpointer`` that reads safely and writes atomically.

    * ``load``/``resume_or_load`` read through :func:`read_checkpoint` (no code runs) and
      refuse a file holding none of the model's weights; ``path?matching_heuristics=True``
      works on both Detectron2 builds.
    * ``save`` and the ``last_checkpoint`` tag are written with :func:`atomic_write`;
      weights holding NaN/Inf are not saved (a warning; the previous file stays).
    * ``resume_or_load(resume=True)`` skips a damaged newest checkpoint with a warning
      and resumes from the newest one that reads; a hostile one is an error.
    * ``max_to_keep`` > 0 keeps only that many periodic ``model_NNNNNNN.pth`` files
      (``model_final.pth`` and the one ``last_checkpoint`` names are always kept).

    Args:
        model, save_dir, save_to_disk, checkpointables: as Detectron2's.
        max_to_keep: periodic checkpoints to keep; 0 keeps all.
        prefer_ema: read a checkpoint's EMA of the weights (``MODEL.RETINANET_EXT.EMA``) in
            place of its trained weights, for evaluating and predicting; never for resuming.
    """

    def __init__(self, model: torch.nn.Module, save_dir: str = "", *,
                 save_to_disk: bool | None = None, max_to_keep: int = 0,
                 prefer_ema: bool = False, **checkpointables: Any) -> None:
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.max_to_keep = int(max_to_keep)
        self.prefer_ema = prefer_ema
        self._matching_heuristics = False
        self._preloaded: tuple[str, dict[str, Any]] | None = None

    @classmethod
    def replacing(cls, checkpointer: Any, max_to_keep: int = 0) -> RetinaNetExtCheckpointer:
        """This class in place of ``checkpointer`` (same model, folder, checkpointables)."""
        return cls(checkpointer.model, checkpointer.save_dir,
                   save_to_disk=checkpointer.save_to_disk, max_to_keep=max_to_keep,
                   **checkpointer.checkpointables)

    # -- reading ------------------------------------------------------------------------

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        """fvcore's ``load``, with a clear error for a missing file or a failed download."""
        if not path:
            return super().load(path, checkpointables)
        parsed = urlparse(path)
        queries = parse_qs(parsed.query)
        self._matching_heuristics = queries.pop("matching_heuristics", ["False"]) == ["True"]
        if queries:
            raise CheckpointError(f"checkpoint {path}: unsupported query {sorted(queries)}")
        path = parsed._replace(query="").geturl()
        if "://" in path:
            try:
                path = self.path_manager.get_local_path(path)
            except Exception as error:  # iopath raises many types for a failed download
                raise CheckpointError(
                    f"checkpoint {path} could not be downloaded: {_describe(error)}") from error
        elif not os.path.isfile(path):
            raise CheckpointError(f"checkpoint {path} does not exist")
        return super().load(path, checkpointables)

    def _load_file(self, filename: str) -> dict[str, Any]:
        """fvcore's hook for reading one local file: :func:`read_checkpoint`, then checked
        against the model (:func:`check_model_entry`)."""
        if self._preloaded is not None and self._preloaded[0] == filename:
            checkpoint, self._preloaded = self._preloaded[1], None
        else:
            checkpoint = read_checkpoint(filename)
        if self.prefer_ema:
            checkpoint = use_ema_weights(checkpoint, filename)
        if self._matching_heuristics:
            checkpoint["matching_heuristics"] = True
        check_model_entry(checkpoint, self.model, filename)
        return checkpoint

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Resume from the newest checkpoint in ``save_dir`` that reads, else load ``path``.

        A damaged checkpoint (empty, truncated, missing) is skipped with a warning; a
        hostile one (:class:`UnsafeCheckpointError`) or ``last_checkpoint`` naming a file
        outside ``save_dir`` stops with an error, as does finding no readable one.
        """
        if self.save_to_disk and self.save_dir and os.path.isdir(self.save_dir):
            self._remove_temporary_files()
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        skipped = []
        for candidate in self._resume_candidates():
            try:
                checkpoint = read_checkpoint(candidate)
                check_model_entry(checkpoint, self.model, candidate)
            except UnsafeCheckpointError:
                raise
            except CheckpointError as error:
                logger.warning("Skipping checkpoint %s: %s", candidate, error)
                skipped.append(os.path.basename(candidate))
                continue
            if skipped:
                logger.warning("Resuming from %s instead of the damaged %s", candidate,
                               ", ".join(skipped))
            self._preloaded = (candidate, checkpoint)
            return self.load(candidate)
        raise CheckpointError(
            f"--resume: no readable checkpoint in {self.save_dir} (tried {skipped}); move "
            f"the damaged files away, or delete {LAST_CHECKPOINT} to start from MODEL.WEIGHTS")

    def get_checkpoint_file(self) -> str:
        """The file ``last_checkpoint`` names, which must be a file name in ``save_dir``.

        Raises:
            UnsafeCheckpointError: it names a path elsewhere (e.g. ``../x`` or ``/tmp/x``).
        """
        try:
            with self.path_manager.open(os.path.join(self.save_dir, LAST_CHECKPOINT)) as f:
                name = f.read().strip()
        except (OSError, UnicodeDecodeError):
            return ""
        if not name:  # an empty tag (a crash before atomic writes): look at every file
            return ""
        if name in (".", "..") or os.path.basename(name) != name:
            raise UnsafeCheckpointError(
                f"{os.path.join(self.save_dir, LAST_CHECKPOINT)} names {name!r}, which is "
                f"not a file name in {self.save_dir}: refusing to resume from it")
        return os.path.join(self.save_dir, name)

    def _resume_candidates(self) -> list[str]:
        """The tagged checkpoint, then the older periodic/final ones, newest first."""
        tagged = self.get_checkpoint_file()
        names = os.listdir(self.save_dir) if os.path.isdir(self.save_dir) else []
        tagged_order = _checkpoint_order(os.path.basename(tagged)) if tagged else None
        older = sorted(
            (n for n in names if _checkpoint_order(n) is not None
             and os.path.join(self.save_dir, n) != tagged
             and (tagged_order is None or _checkpoint_order(n) < tagged_order)),
            key=_checkpoint_order, reverse=True)
        return ([tagged] if tagged else []) + [os.path.join(self.save_dir, n) for n in older]

    # -- writing ------------------------------------------------------------------------

    def save(self, name: str, **kwargs: Any) -> None:
        """fvcore's ``save``, written atomically; refused (warning) for non-finite weights."""
        if not self.save_dir or not self.save_to_disk:
            return
        if "://" in self.save_dir:  # a remote folder: no local rename to rely on
            return super().save(name, **kwargs)
        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        broken = nonfinite_weights(data["model"])
        if broken:
            logger.warning("Not saving %s: %d weights hold NaN/Inf (e.g. %s); the previous "
                           "checkpoints are kept", save_file, len(broken), broken[:3])
            return
        logger.info("Saving checkpoint to %s", save_file)
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)
        if self.max_to_keep > 0:
            self._prune(keep=basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Write ``last_checkpoint`` atomically."""
        if "://" in self.save_dir:
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(os.path.join(self.save_dir, LAST_CHECKPOINT),
                     lambda f: f.write(last_filename_basename.encode()))

    def _prune(self, keep: str) -> None:
        """Delete the oldest periodic checkpoints beyond ``max_to_keep``."""
        periodic = sorted((n for n in os.listdir(self.save_dir) if PERIODIC_CHECKPOINT.match(n)),
                          key=_checkpoint_order, reverse=True)
        for name in periodic[self.max_to_keep:]:
            if name != keep:
                logger.info("Removing old checkpoint %s (keeping %d)", name, self.max_to_keep)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.save_dir, name))

    def _remove_temporary_files(self) -> None:
        """Remove what a killed :func:`atomic_write` left behind (never named as a checkpoint)."""
        for name in os.listdir(self.save_dir):
            if TEMPORARY_FILE.match(name):
                logger.info("Removing %s, left by an interrupted save", name)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.save_dir, name))


def load_weights(model: torch.nn.Module, weights: str) -> dict[str, Any]:
    """Load the checkpoint ``weights`` (a path or URL) into ``model``, safely; a checkpoint
    with an EMA of the weights (``MODEL.RETINANET_EXT.EMA.ENABLED``) gives its EMA weights.

    Returns:
        The checkpoint's other entries (e.g. ``"iteration"``, ``"retinanet_ext_metadata"``,
        ``"__author__"``); the model weights are consumed.

    Raises:
        CheckpointError: empty ``weights``, a missing, damaged or hostile file
            (:class:`UnsafeCheckpointError`), or one holding none of the model's weights.
    """
    if not weights:
        raise CheckpointError("MODEL.WEIGHTS is empty: give the checkpoint to load "
                              "(MODEL.WEIGHTS path/to/model_final.pth)")
    checkpointer = RetinaNetExtCheckpointer(model, prefer_ema=True)
    try:
        return checkpointer.load(weights, checkpointables=[])
    except CheckpointError:
        raise
    except Exception as error:  # fvcore/Detectron2 while matching and loading the weights
        raise CheckpointError(
            f"checkpoint {weights} could not be loaded: {_describe(error)}") from error


# -- the EMA entry (retinanet_ext.engine.ema writes it) ---------------------------------

#: Entry of the EMA in checkpoints written by the project's Trainer.
EMA_CHECKPOINT_KEY = "ema"
#: Prefix of the averaged model's weights in that entry (``AveragedModel.state_dict()``).
_MODULE_PREFIX = "module."


def ema_model_weights(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The EMA weights of a checkpoint written with ``MODEL.RETINANET_EXT.EMA.ENABLED``, as a
    model state dict (the ``"module."`` prefix removed), or None if it has none."""
    entry = checkpoint.get(EMA_CHECKPOINT_KEY)
    if not isinstance(entry, Mapping):
        return None
    weights = {key[len(_MODULE_PREFIX):]: value for key, value in entry.items()
               if isinstance(key, str) and key.startswith(_MODULE_PREFIX)}
    return weights or None


def use_ema_weights(checkpoint: dict[str, Any], path: str) -> dict[str, Any]:
    """``checkpoint`` with its EMA weights as the ``"model"`` entry, if it has them (one log
    line says so); otherwise ``checkpoint`` unchanged. For loaders that evaluate or predict
    (``load_weights``), never for ``--resume``."""
    weights = ema_model_weights(checkpoint)
    if weights is None:
        return checkpoint
    updates = checkpoint[EMA_CHECKPOINT_KEY].get("n_averaged")
    logger.info("Checkpoint %s: using its EMA of the weights (entry '%s', %s updates), not "
                "the trained weights", path, EMA_CHECKPOINT_KEY,
                "?" if updates is None else int(updates))
    return {**checkpoint, "model": weights}
