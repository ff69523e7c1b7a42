"""The set-up's Detectron2 routes: install_detectron2.py's wheel route, ./run test's routes.

Nothing here installs anything into a venv: wheels that do not fit are refused
before pip runs, and pip is replaced where the flow after it is checked.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON_TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"


def load_installer():
    spec = importlib.util.spec_from_file_location(
        "install_detectron2", REPO_ROOT / "tools" / "install_detectron2.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


installer = load_installer()


@pytest.mark.parametrize(
    "name, fits",
    [
        (f"detectron2-0.6-{PYTHON_TAG}-{PYTHON_TAG}-linux_x86_64.whl", True),
        (f"detectron2-0.6-1-{PYTHON_TAG}-{PYTHON_TAG}-manylinux_2_28_x86_64.whl", True),
        ("detectron2-0.6-py3-none-any.whl", True),
        ("detectron2-0.6-cp27-cp27mu-linux_x86_64.whl", False),
        (f"detectron2-0.6-{PYTHON_TAG}-{PYTHON_TAG}-win_amd64.whl", False),
        (f"detectron2-0.6-{PYTHON_TAG}-{PYTHON_TAG}-linux_aarch64.whl", False),
        ("detectron2-0.6.tar.gz", False),
    ],
)
def test_wheel_tags_checked_against_this_interpreter(name: str, fits: bool) -> None:
    if fits and sys.platform != "linux" and "any" not in name:
        pytest.skip("the platform cases are written for x86_64 Linux")
    reason = installer.wheel_tag_mismatch(Path(name))
    assert (reason is None) == fits, reason
    if not fits:
        assert name in reason


def test_find_wheel_picks_a_fitting_wheel(tmp_path: Path) -> None:
    (tmp_path / "detectron2-0.6-cp27-cp27mu-linux_x86_64.whl").touch()
    assert installer.find_wheel(tmp_path) is None
    fitting = tmp_path / "detectron2-0.6-py3-none-any.whl"
    fitting.touch()
    (tmp_path / "other-1.0-py3-none-any.whl").touch()
    assert installer.find_wheel(tmp_path) == fitting


def test_wheel_for_another_python_refused_in_one_line(tmp_path: Path) -> None:
    wheel = tmp_path / "detectron2-0.6-cp27-cp27mu-linux_x86_64.whl"
    wheel.write_bytes(b"not installed: refused on its name")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "install_detectron2.py"), "--wheel", str(wheel)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == installer.WHEEL_DOES_NOT_FIT
    assert result.stderr.strip().splitlines() == [
        f"[install_detectron2] error: {wheel.name} is for cp27, not Python "
        f"{sys.version_info[0]}.{sys.version_info[1]}"
    ]


def test_wheel_whose_extension_does_not_import_is_uninstalled(tmp_path, monkeypatch) -> None:
    wheel = tmp_path / "detectron2-0.6-py3-none-any.whl"
    wheel.write_bytes(b"stand-in")
    pip_calls = []
    monkeypatch.setattr(installer, "pip", lambda *args: pip_calls.append(args))
    monkeypatch.setattr(installer, "installed_from", lambda path: False)
    monkeypatch.setattr(installer, "uninstall_detectron2", lambda: pip_calls.append("uninstall"))
    monkeypatch.setattr(
        installer, "extension_error",
        lambda: "ImportError: _C.so: undefined symbol: _ZN3c104cuda9SetDevice",
    )
    with pytest.raises(installer.WheelDoesNotFit) as error:
        installer.install_wheel(wheel, force=False)
    message = str(error.value)
    assert "\n" not in message
    assert wheel.name in message and "undefined symbol" in message and "uninstalled" in message
    assert any("--no-deps" in call for call in pip_calls if isinstance(call, tuple))
    assert pip_calls[-1] == "uninstall"  # removed again after the failed check


def run_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RETINANET_EXT_")}
    return subprocess.run([str(REPO_ROOT / "run"), *args], capture_output=True, text=True,
                          timeout=900, env={**clean, **env}, cwd=REPO_ROOT)


def test_run_test_without_a_wheel_says_so_in_one_line(tmp_path: Path) -> None:
    result = run_script("test", env={"RETINANET_EXT_WHEELS": str(tmp_path),
                                     "RETINANET_EXT_TEST_ROUTES": "wheel"})
    assert result.returncode == 0, result.stderr
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    lines = result.stderr.splitlines()
    assert lines[:2] == [
        f"[run] no Detectron2 wheel for Python {python} in {tmp_path.resolve()} "
        "(set RETINANET_EXT_DETECTRON2_WHEEL): testing the default route only",
        "[run] route wheel: skipped, no wheel found",
    ]
    assert len(lines) == 3 and re.fullmatch(r"\[run\] \./run test: 0 min \d+ s in all", lines[2])


def test_run_test_rejects_an_unknown_route() -> None:
    result = run_script("test", env={"RETINANET_EXT_TEST_ROUTES": "conda"})
    assert result.returncode == 2
    assert "unknown route 'conda'" in result.stderr


@pytest.mark.slow
def test_run_test_one_route_shows_the_detectron2_build() -> None:
    # docs/install.md's one-route command, on the route this suite runs on (no other venv is made).
    venv = os.environ.get("RETINANET_EXT_VENV")
    if not venv or Path(venv).resolve() != Path(sys.prefix).resolve():
        pytest.skip("run by ./run test only (elsewhere ./run would install into a venv)")
    wheel = os.environ.get("RETINANET_EXT_DETECTRON2_WHEEL", "")
    route = "wheel" if wheel else "default"
    env = {"RETINANET_EXT_TEST_ROUTES": route, "RETINANET_EXT_DETECTRON2_WHEEL": wheel,
           "RETINANET_EXT_VENV" if route == "default" else "RETINANET_EXT_WHEEL_VENV": venv}
    result = run_script("test", "--collect-only", "tests/test_compat.py", env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "[run] creating" not in result.stderr and "installing" not in result.stderr
    from retinanet_ext import compat

    assert compat.describe_detectron2() in result.stdout
    assert f"[run] route {route}: passed" in result.stderr


def test_readme_wheel_install_commands_on_the_wheel_route() -> None:
    # docs/install.md's two wheel commands, on the venv ./run test's wheel route made from that
    # wheel: both find it installed (same stamp, same wheel) and change nothing.
    wheel = os.environ.get("RETINANET_EXT_DETECTRON2_WHEEL", "")
    venv = os.environ.get("RETINANET_EXT_VENV")
    if not wheel or not venv or Path(venv).resolve() != Path(sys.prefix).resolve():
        pytest.skip("run by ./run test's wheel route only (elsewhere it would install)")
    result = run_script("install", env={"RETINANET_EXT_VENV": venv,
                                        "RETINANET_EXT_DETECTRON2_WHEEL": wheel})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # stamped: nothing to install
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "install_detectron2.py"), "--wheel", wheel],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"{Path(wheel).name} already installed" in result.stdout


class _Item:
    """What conftest's collection hook reads and writes on a test item."""

    def __init__(self, nodeid: str, *markers: str) -> None:
        self.nodeid = nodeid
        self.keywords = set(markers)
        self.added: list = []

    def add_marker(self, marker) -> None:
        self.added.append(marker)


@pytest.mark.parametrize("route, once_route, runs", [
    ("wheel", "default", ""), ("default", "default", "abc"),
    ("wheel", "", "abc"),  # RETINANET_EXT_ONCE_ROUTE= : every route runs them
    ("", "default", "abc"),  # pytest run by hand, not through ./run test
    ("default", "default,wheel", "ac"), ("wheel", "default,wheel", "b"),  # dealt out by name
])
def test_once_tests_are_dealt_out_between_routes(route, once_route, runs, monkeypatch) -> None:
    from tests.conftest import pytest_collection_modifyitems

    monkeypatch.setenv("RETINANET_EXT_ROUTE", route)
    monkeypatch.setenv("RETINANET_EXT_ONCE_ROUTE", once_route)
    items = [_Item("t.py::c", "once", "slow"), _Item("t.py::a", "once"), _Item("t.py::x", "slow"),
             _Item("t.py::b", "once")]
    pytest_collection_modifyitems(None, items)
    assert items[2].added == []
    ran = "".join(sorted(item.nodeid[-1] for item in items if "once" in item.keywords
                         and not item.added))
    assert ran == runs
    for item in items:
        for marker in item.added:
            assert marker.name == "skip" and "marker 'once'" in marker.kwargs["reason"]
