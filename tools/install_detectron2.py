"""Install Detectron2 into the running interpreter's environment.

Three routes. A local wheel is used when one is named; otherwise the route is chosen
automatically (override with RETINANET_EXT_DETECTRON2_ROUTE):

* ``wheel``: a Detectron2 wheel built once from source (``python setup.py bdist_wheel``)
  and kept, named by ``--wheel PATH`` or ``RETINANET_EXT_DETECTRON2_WHEEL=PATH``. It is
  installed with ``--no-deps``, plus Detectron2's run-time dependencies from
  ``requirements/detectron2.txt``; then ``import detectron2._C`` is tried beside the
  installed torch. A wheel that does not fit (its tags name another Python or
  platform, or its extension was built against another torch) is uninstalled again
  and reported in one line, with exit status 3.
* ``source``: Detectron2's official GitHub repository, compiled with its C++
  extension ``detectron2._C``. The normal route for a user with internet access.
* ``pypi``: the v0.6 release from PyPI (``pb1-detectron2==0.6``: the Python code
  of the v0.6 tag, without the C++ sources). Its ``setup.py`` always tries to
  compile ``detectron2._C`` and so cannot be installed as is; this script builds a
  pure-Python wheel of it with the extension left out and installs that wheel, so
  the result is an ordinary distribution (``pip show``/``pip uninstall`` work).
  ``retinanet_ext.compat``'s bridges (a start-up hook ``./run`` writes into the venv) stand
  in for the missing extension when it is imported (docs/compat.md).

Usage: ``python tools/install_detectron2.py [--route auto|source|pypi] [--wheel PATH]
[--force]``; ``--find-wheel DIR`` prints the first wheel in DIR whose tags fit this
interpreter (exit status 1 and one line on stderr when none does).
Idempotent: does nothing when an importable detectron2 distribution is installed
(for ``--wheel``: when that same wheel is installed and its extension imports).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

SOURCE_URL = "https://github.com/facebookresearch/detectron2.git"
PYPI_NAME = "pb1-detectron2"
PYPI_VERSION = "0.6"
# sha256 of pb1-detectron2-0.6.tar.gz as served by the registry; checked before building.
PYPI_SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements"
CONSTRAINTS = REQUIREMENTS / "torch.txt"
# Detectron2's run-time dependencies, for a wheel installed with --no-deps.
WHEEL_DEPENDENCIES = REQUIREMENTS / "detectron2.txt"
WHEEL_DOES_NOT_FIT = 3  # exit status: the named wheel cannot be used with this torch/Python

# Runs the sdist's own setup.py with its compiled extension removed. The package
# data of detectron2.model_zoo (its YAML configs) is listed explicitly because the
# sdist's setup.py only globs a top-level configs/ folder that the sdist lacks.
_BUILD_WITHOUT_EXTENSION = r"""
import glob, os, runpy, sys, setuptools
_setup = setuptools.setup
def setup(**kwargs):
    kwargs.pop("ext_modules", None)
    kwargs.pop("cmdclass", None)
    zoo = os.path.join("detectron2", "model_zoo")
    found = glob.glob(os.path.join(zoo, "configs", "**", "*.*"), recursive=True)
    configs = [os.path.relpath(p, zoo) for p in found]
    kwargs.setdefault("package_data", {})["detectron2.model_zoo"] = configs
    return _setup(**kwargs)
setuptools.setup = setup
sys.argv = ["setup.py", "-q", "bdist_wheel", "--dist-dir", sys.argv[1]]
runpy.run_path("setup.py", run_name="__main__")
"""


def log(message: str) -> None:
    print(f"[install_detectron2] {message}", flush=True)


def installed_distribution() -> str | None:
    """Name and version of the installed detectron2 distribution, if importable."""
    for name in ("detectron2", PYPI_NAME):
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        probe = subprocess.run([sys.executable, "-c", "import detectron2"], capture_output=True)
        if probe.returncode == 0:
            return f"{name}=={version}"
    return None


def source_reachable(timeout_s: float = 20.0) -> bool:
    try:
        result = subprocess.run(
            ["git", "ls-remote", "--heads", SOURCE_URL],
            capture_output=True,
            timeout=timeout_s,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    log(" ".join(command[2:]))
    subprocess.run(command, check=True)


def install_from_source() -> None:
    # No build isolation: the extension must compile against the torch already installed.
    pip("install", "--no-build-isolation", "-c", str(CONSTRAINTS), f"git+{SOURCE_URL}")


def download_sdist(target_dir: Path) -> Path:
    """Fetch the pinned sdist from the package index (PIP_INDEX_URL or PyPI).

    Not ``pip download``: recent pip refuses this distribution because its ``all``
    extra names a direct URL (panopticapi), though that extra is never installed.
    """
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    page_url = f"{index}/{PYPI_NAME}/"
    with urllib.request.urlopen(page_url, timeout=120) as response:
        page = response.read().decode()
    wanted = f"{PYPI_NAME}-{PYPI_VERSION}.tar.gz"
    links = [href for href in re.findall(r'href="([^"]+)"', page) if wanted in href]
    if not links:
        raise SystemExit(f"{page_url} lists no {wanted}")
    url = urllib.parse.urljoin(page_url, links[0].split("#")[0])
    sdist = target_dir / wanted
    log(f"downloading {wanted}")
    with urllib.request.urlopen(url, timeout=300) as response:
        sdist.write_bytes(response.read())
    return sdist


def install_from_pypi(work_dir: Path) -> None:
    sdist = download_sdist(work_dir)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != PYPI_SDIST_SHA256:
        raise SystemExit(
            f"{sdist}: sha256 {digest} does not match the expected {PYPI_SDIST_SHA256}; "
            "refusing to build it."
        )
    import tarfile

    with tarfile.open(sdist) as archive:
        archive.extractall(work_dir, filter="data")
    source_dir = work_dir / f"{PYPI_NAME}-{PYPI_VERSION}"
    wheel_dir = work_dir / "wheel"
    log(f"building a wheel of {sdist.name} without the compiled extension")
    subprocess.run(
        [sys.executable, "-c", _BUILD_WITHOUT_EXTENSION, str(wheel_dir)], cwd=source_dir, check=True
    )
    (wheel,) = glob.glob(str(wheel_dir / "*.whl"))
    pip("install", "-c", str(CONSTRAINTS), wheel)


class WheelDoesNotFit(Exception):
    """The named Detectron2 wheel cannot be used beside this torch/Python."""


def wheel_tag_mismatch(wheel: Path) -> str | None:
    """Why WHEEL's file-name tags rule out this interpreter, or None if they allow it.

    A pre-check only (PEP 427 name: ``NAME-VER[-BUILD]-PY-ABI-PLATFORM.whl``): the torch
    the extension was built against is not in the name; :func:`extension_error` checks it.
    """
    parts = wheel.name[: -len(".whl")].split("-")
    if not wheel.name.endswith(".whl") or len(parts) not in (5, 6):
        return f"{wheel.name} is not a wheel file name (NAME-VERSION-PY-ABI-PLATFORM.whl)"
    python_tags, abi_tags, platform_tags = (set(part.split(".")) for part in parts[-3:])
    major, minor = sys.version_info[:2]
    cpython = f"cp{major}{minor}"
    if not python_tags & {cpython, f"py{major}{minor}", f"py{major}"}:
        return f"{wheel.name} is for {'/'.join(sorted(python_tags))}, not Python {major}.{minor}"
    if not abi_tags & {cpython, "abi3", "none"}:
        return f"{wheel.name} has ABI {'/'.join(sorted(abi_tags))}, not {cpython}"
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    arch = platform.split("_", 1)[-1]
    if not any(
        tag in ("any", platform) or (platform.startswith("linux") and
                                     re.fullmatch(rf"(many|musl)linux\w*_{arch}", tag))
        for tag in platform_tags
    ):
        return f"{wheel.name} is for {'/'.join(sorted(platform_tags))}, not {platform}"
    return None


def find_wheel(folder: Path) -> Path | None:
    """The newest Detectron2 wheel in FOLDER whose tags fit this interpreter."""
    candidates = sorted(folder.glob("detectron2-*.whl"), key=lambda p: p.stat().st_mtime)
    fitting = [wheel for wheel in candidates if wheel_tag_mismatch(wheel) is None]
    return fitting[-1] if fitting else None


def extension_error() -> str | None:
    """None if ``import detectron2._C`` works beside the installed torch, else why not."""
    probe = subprocess.run(
        [sys.executable, "-c", "import torch, detectron2._C"], capture_output=True, text=True
    )
    if probe.returncode == 0:
        return None
    lines = probe.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {probe.returncode}"


def installed_from(wheel: Path) -> bool:
    """Whether the installed ``detectron2`` came from WHEEL (same path, same sha256)."""
    importlib.invalidate_caches()
    try:
        direct_url = importlib.metadata.distribution("detectron2").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return False
    record = json.loads(direct_url or "{}")
    if record.get("url") != wheel.as_uri():
        return False
    recorded = record.get("archive_info", {}).get("hashes", {}).get("sha256")
    return recorded is None or recorded == hashlib.sha256(wheel.read_bytes()).hexdigest()


def uninstall_detectron2() -> None:
    for name in ("detectron2", PYPI_NAME):
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        pip("uninstall", "-y", "-q", name)
        importlib.invalidate_caches()


def install_wheel(wheel: Path, force: bool) -> None:
    """Install a local Detectron2 wheel with --no-deps plus Detectron2's dependencies.

    Raises :class:`WheelDoesNotFit` (after uninstalling it again) when its extension
    does not import beside the installed torch.
    """
    wheel = wheel.resolve()
    if not wheel.is_file():
        raise WheelDoesNotFit(f"{wheel}: no such file")
    mismatch = wheel_tag_mismatch(wheel)
    if mismatch:
        raise WheelDoesNotFit(mismatch)
    if not force and installed_from(wheel) and extension_error() is None:
        log(f"{wheel.name} already installed from {wheel.parent}; nothing to do")
        return
    pip("install", "-q", "-c", str(CONSTRAINTS), "-r", str(WHEEL_DEPENDENCIES))
    uninstall_detectron2()  # e.g. pb1-detectron2: two distributions must not share detectron2/
    pip("install", "-q", "--no-deps", "--force-reinstall", str(wheel))
    error = extension_error()
    if error is not None:
        uninstall_detectron2()
        import torch

        raise WheelDoesNotFit(
            f"{wheel.name} does not fit torch {torch.__version__} / Python "
            f"{sys.version.split()[0]}: 'import detectron2._C' failed ({error}); uninstalled it"
        )
    log(f"installed {wheel.name}; detectron2._C imports beside torch")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--route",
        choices=("auto", "source", "pypi"),
        default=os.environ.get("RETINANET_EXT_DETECTRON2_ROUTE", "auto"),
    )
    parser.add_argument(
        "--wheel",
        type=Path,
        default=os.environ.get("RETINANET_EXT_DETECTRON2_WHEEL") or None,
        help="install this local Detectron2 wheel (default: $RETINANET_EXT_DETECTRON2_WHEEL)",
    )
    parser.add_argument("--find-wheel", type=Path, metavar="DIR",
                        help="print the first wheel in DIR that fits this Python, then exit")
    parser.add_argument("--force", action="store_true", help="reinstall even if present")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.find_wheel is not None:
        found = find_wheel(args.find_wheel)
        if found is None:
            python = sys.version.split()[0]
            sys.exit(f"no Detectron2 wheel for Python {python} in {args.find_wheel}")
        print(found)
        return
    if args.wheel is not None:
        try:
            install_wheel(Path(args.wheel), args.force)
        except WheelDoesNotFit as error:
            print(f"[install_detectron2] error: {error}", file=sys.stderr, flush=True)
            sys.exit(WHEEL_DOES_NOT_FIT)
        return

    present = installed_distribution()
    if present and not args.force:
        log(f"{present} already installed; nothing to do")
        return

    route = args.route
    if route == "auto":
        route = "source" if source_reachable() else "pypi"
        log(
            "GitHub reachable: installing the official source with its C++ extension"
            if route == "source"
            else "GitHub not reachable: installing the v0.6 release from PyPI without its "
            "C++ extension"
        )
    if route == "source":
        try:
            install_from_source()
            return
        except subprocess.CalledProcessError:
            if args.route == "source":
                raise
            log("building from source failed; falling back to the PyPI v0.6 release")
    with tempfile.TemporaryDirectory(prefix="detectron2-build-") as work_dir:
        install_from_pypi(Path(work_dir))
    log(f"installed {installed_distribution()}")


if __name__ == "__main__":
    main()
