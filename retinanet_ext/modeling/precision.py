"""Numeric precision of the network: float32, or autocast to bfloat16 / float16.

``MODEL.RETINANET_EXT.PRECISION`` chooses it. Reduced precision covers the backbone and the
head (the convolutions, where the time goes); anchors, box decoding, top-k, NMS and the
losses always run in float32 on float32 predictions.

bfloat16 on a CPU is fast only where the CPU has native bf16 instructions (AVX512-BF16 or
AMX-BF16): elsewhere PyTorch emulates it, orders of magnitude slower than float32 for a
convolution on an AVX2-only CPU (docs/benchmarks.md). So "bfloat16" is refused on such a
CPU, with the alternatives, and "auto" falls back to float32 there with a warning; nothing runs
emulated bf16 silently.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import torch

__all__ = [
    "PRECISIONS",
    "cpu_bf16_flags",
    "cpu_description",
    "network_autocast",
    "post_head_float32",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "bfloat16", "float16", "auto")
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU's native bf16 instruction-set flags found in /proc/cpuinfo (empty if none, or
    if /proc/cpuinfo cannot be read, e.g. not on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return tuple(flag for flag in _NATIVE_BF16_FLAGS if flag in flags)
    except OSError:
        pass
    return ()


def cpu_description() -> str:
    """The CPU as PyTorch sees it, for messages: capability and native bf16 flags."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ", ".join(cpu_bf16_flags()) or "no avx512_bf16/amx_bf16"
    return f"CPU capability {capability} ({flags})"


def resolve_precision(precision: str, device: str | torch.device) -> torch.dtype:
    """The dtype the backbone and head compute in: ``MODEL.RETINANET_EXT.PRECISION``
    ``precision`` resolved on ``device`` ("cpu", "cuda", "cuda:1"); ``torch.float32`` means no
    autocast. The one place the setting is resolved: the model does it once, when it is
    built, and keeps the result as ``network_dtype``.

    Raises:
        ValueError: an unknown precision, float16 on a CPU, or bfloat16 on a CPU without
            native bf16 (the message names the CPU and the alternatives).
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"MODEL.RETINANET_EXT.PRECISION = {precision!r}: expected one of {list(PRECISIONS)}."
        )
    if precision == "float32":
        return torch.float32
    if torch.device(device).type == "cuda":
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if precision == "bfloat16" else torch.float16
    native = bool(cpu_bf16_flags())
    if precision == "auto":
        if native:
            return torch.bfloat16
        logger.warning(
            "MODEL.RETINANET_EXT.PRECISION auto: %s has no native bf16, running float32.",
            cpu_description(),
        )
        return torch.float32
    if precision == "float16":
        raise ValueError(
            "MODEL.RETINANET_EXT.PRECISION float16 needs a CUDA device; on a CPU use bfloat16 "
            f"(where the CPU has native bf16), float32, or 'auto'. This is a {cpu_description()}."
        )
    if not native:
        raise ValueError(
            f"MODEL.RETINANET_EXT.PRECISION bfloat16: this {cpu_description()} has no native "
            "bf16 instructions, so PyTorch would emulate them (hundreds of times slower than "
            "float32). Use float32 (the default), 'auto' (bf16 only where native), or an "
            "exported model with onnxruntime/OpenVINO (retinanet-ext export)."
        )
    return torch.bfloat16


@contextlib.contextmanager
def network_autocast(dtype: torch.dtype, device_type: str) -> Iterator[None]:
    """Autocast to ``dtype`` (a :func:`resolve_precision` result; nothing for float32)."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield


@contextlib.contextmanager
def post_head_float32(device_type: str) -> Iterator[None]:
    """Autocast off: what follows the head runs in float32 whatever encloses it."""
    with torch.autocast(device_type=device_type, enabled=False):
        yield
