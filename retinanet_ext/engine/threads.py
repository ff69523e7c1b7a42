"""How many CPU threads the model uses: ``MODEL.RETINANET_EXT.NUM_THREADS``.

PyTorch sizes its thread pool from the host's cores, not from what this process may use: in a
container limited to 2 CPUs on a 64-core host it starts 64 threads, and the convolutions
then run several times slower than with 2. ``NUM_THREADS: 0`` (the default) uses the CPUs
this process can really run on: its CPU affinity, capped by a cgroup CPU quota (Docker's
``--cpus``, Kubernetes limits), or ``OMP_NUM_THREADS`` where it is set. A positive value is
used as given.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from detectron2.config import CfgNode

__all__ = ["available_cpus", "configure_cpu_threads"]

logger = logging.getLogger(__name__)


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The cgroup CPU quota in whole CPUs (rounded up), or None without a quota."""
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        pass
    return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        count = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return min(count, limit) if limit else count


def configure_cpu_threads(cfg: CfgNode) -> int:
    """Set torch's intra-op threads from ``MODEL.RETINANET_EXT.NUM_THREADS`` (0:
    ``OMP_NUM_THREADS`` if set, else :func:`available_cpus`) and log it with the data loader's
    workers; returns the number set."""
    wanted = int(cfg.MODEL.RETINANET_EXT.NUM_THREADS)
    cpus = available_cpus()
    from_env = os.environ.get("OMP_NUM_THREADS", "")
    if wanted > 0:
        threads, how = wanted, str(wanted)
    elif from_env.isdigit() and int(from_env) > 0:
        threads, how = int(from_env), f"0: OMP_NUM_THREADS={from_env}"
    else:
        threads, how = cpus, "0: auto"
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    workers = int(cfg.DATALOADER.NUM_WORKERS)
    logger.info("CPU threads for the model: %d (MODEL.RETINANET_EXT.NUM_THREADS %s; %d CPUs "
                "available to this process); data loader workers: %d", threads, how, cpus,
                workers)
    if cfg.MODEL.DEVICE == "cpu" and threads + workers > 2 * cpus:
        logger.warning("%d model threads and %d data loader workers share %d CPUs: expect "
                       "slow steps; lower DATALOADER.NUM_WORKERS or "
                       "MODEL.RETINANET_EXT.NUM_THREADS", threads, workers, cpus)
    return threads
