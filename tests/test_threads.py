"""MODEL.RETINANET_EXT.NUM_THREADS: torch's threads from the CPUs this process may really use."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from retinanet_ext.config import get_retinanet_ext_cfg
from retinanet_ext.engine import ConfigError, check_config, configure_cpu_threads
from retinanet_ext.engine import threads as threads_module


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _cgroup(tmp_path: Path, text: str) -> Path:
    (tmp_path / "cpu.max").write_text(text)
    return tmp_path


def test_cgroup_quota_in_whole_cpus(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert threads_module._cgroup_cpu_limit(_cgroup(tmp_path / "a", "max 100000")) is None
    (tmp_path / "b").mkdir()
    assert threads_module._cgroup_cpu_limit(_cgroup(tmp_path / "b", "150000 100000")) == 2
    (tmp_path / "c").mkdir()
    assert threads_module._cgroup_cpu_limit(_cgroup(tmp_path / "c", "50000 100000")) == 1
    (tmp_path / "d").mkdir()  # cgroup v1 layout
    (tmp_path / "d" / "cpu").mkdir()
    (tmp_path / "d" / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "d" / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads_module._cgroup_cpu_limit(tmp_path / "d") == 3
    assert threads_module._cgroup_cpu_limit(tmp_path / "nothing") is None


def test_available_cpus_is_capped_by_the_quota(monkeypatch) -> None:
    monkeypatch.setattr(threads_module.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(threads_module, "_cgroup_cpu_limit", lambda: 2)
    assert threads_module.available_cpus() == 2
    monkeypatch.setattr(threads_module, "_cgroup_cpu_limit", lambda: None)
    assert threads_module.available_cpus() == 64


def test_auto_and_explicit_thread_counts(monkeypatch, restore_threads, caplog) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_module, "available_cpus", lambda: 1)
    cfg = get_retinanet_ext_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATALOADER.NUM_WORKERS = 4
    with caplog.at_level(logging.INFO, logger="retinanet_ext.engine.threads"):
        assert configure_cpu_threads(cfg) == 1
    assert torch.get_num_threads() == 1
    assert "NUM_THREADS 0: auto; 1 CPUs" in caplog.text
    assert "share 1 CPUs" in caplog.text  # 1 thread + 4 workers on 1 CPU
    cfg.MODEL.RETINANET_EXT.NUM_THREADS = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="retinanet_ext.engine.threads"):
        assert configure_cpu_threads(cfg) == 2
    assert torch.get_num_threads() == 2
    assert "share" not in caplog.text


def test_negative_thread_count_is_refused() -> None:
    cfg = get_retinanet_ext_cfg()
    cfg.MODEL.RETINANET_EXT.NUM_THREADS = -1
    with pytest.raises(ConfigError, match="MODEL.RETINANET_EXT.NUM_THREADS"):
        check_config(cfg)


def test_omp_num_threads_is_respected_in_auto(monkeypatch, restore_threads) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(threads_module, "available_cpus", lambda: 2)
    cfg = get_retinanet_ext_cfg()
    assert configure_cpu_threads(cfg) == 1
    cfg.MODEL.RETINANET_EXT.NUM_THREADS = 2  # the config key wins over the variable
    assert configure_cpu_threads(cfg) == 2
