"""The built wheel: it ships the Hydra configs (conf/, reached through the saes/conf symlink) inside
``saes``, installs no generic top-level names (``server``, ``launchers``, ``tests``...), and an
installed copy runs ``python -m saes.train`` / ``saes.evaluate`` / ``saes.analyze`` and finds its
Hydra launcher plugin from any working directory. Built offline without build isolation (setuptools
from this venv), from a copy of the sources so that no build/ or egg-info lands in the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

# Everything a wheel could pick up by mistake is copied, so that the "not in the wheel" checks mean
# something; ui/ and docs/ hold no Python.
SOURCES = ["pyproject.toml", "README.md", "saes", "conf", "hydra_plugins", "server", "launchers", "tests",
           "benchmarks", "scripts"]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist", "outputs", "multirun",
                                "wandb", "node_modules", "*.safetensors", "*.gguf")


def _run(cmd: list[str], *, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited with {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Build the wheel and ``pip install --target`` it; the paths and the environment that runs it."""
    root = tmp_path_factory.mktemp("packaging").resolve()
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=IGNORE)  # saes/conf stays a symlink
        elif path.exists():
            shutil.copy2(path, src / name)
    assert (src / "saes" / "conf").is_symlink()
    wheels = root / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-q", "-w", str(wheels), str(src)], cwd=root)
    (wheel,) = wheels.glob("saes-*.whl")
    site = root / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", "-q",
          "--target", str(site), str(wheel)], cwd=root)
    work = root / "elsewhere"  # a working directory outside the repository, with no conf/ of its own
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HYDRA"))}
    # PYTHONPATH precedes site-packages, so the copy in `site` wins over .venv's editable install
    env.update(PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    return {"wheel": wheel, "site": site, "work": work, "env": env}


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_wheel_ships_every_config_under_saes_conf(installed):
    names = set(_names(installed["wheel"]))
    assert "saes/conf/train.yaml" in names
    want = {f"saes/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    assert len(want) > 20
    assert want <= names, sorted(want - names)
    assert {n for n in names if n.startswith("saes/conf/")} == want  # nothing else, no stray non-YAML


def test_wheel_installs_only_saes_and_its_hydra_plugin(installed):
    names = _names(installed["wheel"])
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"saes", "hydra_plugins"}, top
    assert not [n for n in names if n.startswith(("server/", "launchers/", "tests/", "benchmarks/", "scripts/"))]
    # hydra_plugins is a namespace package shared with every Hydra plugin: no __init__.py of ours
    assert {n for n in names if n.startswith("hydra_plugins/")} == {
        "hydra_plugins/saes_launchers/__init__.py", "hydra_plugins/saes_launchers/local_gpus.py"}
    assert "saes/__init__.py" in names and "saes/evaluate/__main__.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_installed_copy_is_the_one_imported(installed):
    code = ("import pkgutil, saes, saes.config, hydra_plugins, hydra_plugins.saes_launchers as p; "
            "print(saes.__file__); print(saes.config.CONF_DIR); print(p.__file__); "
            "print(any(m.name == 'hydra_submitit_launcher' for m in pkgutil.iter_modules(hydra_plugins.__path__)))")
    out = _run([sys.executable, "-c", code], cwd=installed["work"], env=installed["env"]).stdout.split("\n")
    site = installed["site"].resolve()
    assert Path(out[0]).resolve() == site / "saes" / "__init__.py", out
    assert Path(out[1]) == site / "saes" / "conf" and (site / "saes" / "conf" / "train.yaml").is_file(), out
    assert Path(out[2]).resolve() == site / "hydra_plugins" / "saes_launchers" / "__init__.py", out
    assert out[3] == "True", "hydra-submitit-launcher's plugin must stay visible in the shared namespace"


def test_train_composes_its_config_from_the_installed_copy(installed):
    run = lambda *args: _run([sys.executable, "-m", "saes.train", *args], cwd=installed["work"],
                             env=installed["env"]).stdout
    job = run("--cfg", "job")
    assert "architecture: topk" in job and "smollm2-135m" in job, job
    assert f"file://{installed['site'] / 'saes' / 'conf'}" in run("--info", "searchpath")
    assert not list(installed["work"].iterdir()), "--cfg/--info must not write outputs/"


def test_evaluate_and_analyze_help_from_the_installed_copy(installed):
    for module, groups in [("saes.evaluate", "model: gemma2_2b, gpt2"),
                           ("saes.analyze", "launcher: local, local_gpus, slurm")]:
        out = _run([sys.executable, "-m", module, "--help"], cwd=installed["work"], env=installed["env"]).stdout
        assert "== Configuration groups ==" in out and groups in out, (module, out)


def test_installed_hydra_plugin_is_discovered_and_launches(installed, tmp_path):
    env = installed["env"]
    out = _run([sys.executable, "-m", "saes.train", "launcher=local_gpus", "--cfg", "hydra"], cwd=installed["work"],
               env=env).stdout
    assert "_target_: hydra_plugins.saes_launchers.local_gpus.LocalGPULauncher" in out, out
    # a multirun with no GPU to use instantiates the installed launcher, which stops before any job
    cmd = [sys.executable, "-m", "saes.train", "-m", "launcher=local_gpus", "hydra.launcher.gpus=[]",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    env = {**env, "HYDRA_FULL_ERROR": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, check=False, cwd=installed["work"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "found no CUDA GPU" in proc.stderr, proc.stderr
    assert str(installed["site"] / "hydra_plugins" / "saes_launchers" / "local_gpus.py") in proc.stderr, proc.stderr
