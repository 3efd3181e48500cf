"""The interop venv: SAELens, sparsify and llamascopium next to the torch build saes uses.

The peers cannot share saes' environment (sae-lens pins transformer-lens<4; saes needs >=4.3),
so ``interop_python()`` creates a venv under ``<saes cache>/interop-venv/<hash of the pins>``
with ``uv`` (pins: ``[tool.saes.interop]`` in pyproject.toml) and reuses it while the pins, the
torch version and the Python version stay the same.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from saes.paths import cache_dir

from tests.conftest import REPO


def requirements() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["saes"]["interop"]["requirements"]


def _find_links() -> list[str]:
    """pip's find-links folders (uv ignores pip's configuration)."""
    dirs = os.environ.get("PIP_FIND_LINKS", "").split()
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                             capture_output=True, text=True, timeout=60).stdout
        dirs += out.split()
    except (OSError, subprocess.SubprocessError):
        pass
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def _torch_requirement() -> tuple[str, list[str]]:
    """The torch saes runs on, as a local wheel when pip has one (else the CPU or default index)."""
    import torch

    version = torch.__version__
    pyver = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for folder in _find_links():
        wheels = glob.glob(os.path.join(folder, f"torch-{version}-{pyver}-*.whl"))
        if wheels:
            return wheels[0], []
    extra = ["--extra-index-url", "https://download.pytorch.org/whl/cpu"] if "+cpu" in version else []
    return f"torch=={version}", extra


def interop_python() -> Path:
    """Path to the interop venv's python, creating the venv on first use."""
    import torch

    reqs = requirements()
    key = hashlib.sha256("\n".join([*reqs, torch.__version__, sys.version]).encode()).hexdigest()[:12]
    root = cache_dir() / "interop-venv" / key
    python = root / "bin" / "python"
    if (root / ".ready").exists():
        return python
    shutil.rmtree(root, ignore_errors=True)  # a partial venv from an interrupted run
    root.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    uv = Path(sys.executable).parent / "uv"
    install = [str(uv), "pip", "install", "--python", str(python), "-q"] if uv.exists() else \
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    torch_req, index = _torch_requirement()
    links = [arg for d in _find_links() for arg in ("--find-links", d)]
    run = dict(check=True, capture_output=True, text=True, timeout=900)
    try:
        subprocess.run([*install, *links, *index, torch_req], **run)  # torch without bytecode (large, fast to import)
        subprocess.run([*install, *links, *index, "--compile-bytecode", torch_req, *reqs], **run)
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"could not build the interop venv at {root}:\n{err.stdout}\n{err.stderr}") from err
    (root / ".ready").write_text("\n".join(reqs) + "\n")
    return python
