"""What the benchmarks record about the machine they ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


#: Instruction-set flags that decide the speed of float32, bf16 and int8 kernels.
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
              "amx_int8")


def cpu_simd_flags() -> str:
    """Which of :data:`SIMD_FLAGS` the CPU has (from /proc/cpuinfo), space separated."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return " ".join(flag for flag in SIMD_FLAGS if flag in flags) or "none of them"
    except OSError:
        pass
    return "unknown"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def results_header(title: str, command: str, info: dict) -> list[str]:
    """The first lines of a results markdown file: its title, the command that wrote it and a
    key/value table of the machine and versions (``info``), then a blank line."""
    return [f"# {title}", "", f"Command: `{command.strip()}`", "", "| key | value |",
            "| --- | --- |", *(f"| {key} | {value} |" for key, value in info.items()), ""]
