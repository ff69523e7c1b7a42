"""Install Detectron2 into the running interpreter's environment.

Two routes, chosen automatically (override with RETINANET_EXT_DETECTRON2_ROUTE):

* ``source``: Detectron2's official GitHub repository, compiled with its C++
  extension ``detectron2._C``. The normal route for a user with internet access.
* ``pypi``: the v0.6 release from PyPI (``pb1-detectron2==0.6``: the Python code
  of the v0.6 tag, without the C++ sources). Its ``setup.py`` always tries to
  compile ``detectron2._C`` and so cannot be installed as is; this script builds a
  pure-Python wheel of it with the extension left out and installs that wheel, so
  the result is an ordinary distribution (``pip show``/``pip uninstall`` work).
  ``retinanet_ext.compat`` bridges the missing extension at import time.

Usage: ``python tools/install_detectron2.py [--route auto|source|pypi] [--force]``.
Idempotent: does nothing when an importable detectron2 distribution is installed.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

SOURCE_URL = "https://github.com/facebookresearch/detectron2.git"
PYPI_NAME = "pb1-detectron2"
PYPI_VERSION = "0.6"
# sha256 of pb1-detectron2-0.6.tar.gz as served by the registry; checked before building.
PYPI_SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
CONSTRAINTS = Path(__file__).resolve().parent.parent / "requirements" / "torch.txt"

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--route",
        choices=("auto", "source", "pypi"),
        default=os.environ.get("RETINANET_EXT_DETECTRON2_ROUTE", "auto"),
    )
    parser.add_argument("--force", action="store_true", help="reinstall even if present")
    args = parser.parse_args()

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
