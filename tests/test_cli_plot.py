"""``retinanet-ext plot``: a PNG of the runs' curves; a missing run is one error line."""

from __future__ import annotations

from pathlib import Path

from retinanet_ext_cli import main
from tests.test_plots import write_metrics


def test_plot_two_runs(tmp_path: Path, capsys) -> None:
    runs = [write_metrics(tmp_path / "r1", 100), write_metrics(tmp_path / "r2", 140, 0.5)]
    out = tmp_path / "plots" / "curves.png"
    assert main(["plot", *map(str, runs), "--output", str(out), "--labels", "one", "two"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2 run(s)" in capsys.readouterr().out


def test_plot_errors(tmp_path: Path, capsys) -> None:
    assert main(["plot", str(tmp_path / "missing"), "--output", str(tmp_path / "x.png")]) == 2
    assert "metrics.json does not exist" in capsys.readouterr().err
    run = write_metrics(tmp_path / "r", 60)
    assert main(["plot", str(run), "--labels", "a", "b"]) == 2
    assert "--labels gives 2 names for 1 runs" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
