"""A run folder is never mistaken for another: distinct overrides get distinct folders, and a
folder is resumed (or reported finished) only by the config that made it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from saes.config import run_name
from saes.errors import ConfigError
from saes.training.reuse import check_same_run

from tests.conftest import REPO
from tests.test_config import _compose
from tests.training.test_sweeps import TINY


def test_overrides_that_differ_only_in_unsafe_characters_get_different_folders():
    a, b = run_name("data.path=/a/b"), run_name("data.path=/a_b")
    assert a != b and a.startswith("data.path=_a_b_") and b.startswith("data.path=_a_b_")
    assert run_name("layer=5,tokens=1000000") == "layer=5,tokens=1000000"  # safe names are kept as they are
    assert run_name("") == "default"
    long_a, long_b = run_name("sae.k=1," + "x" * 200), run_name("sae.k=2," + "x" * 200)
    assert long_a != long_b and len(long_a) <= 111


def test_reuse_refuses_a_folder_of_another_config_naming_the_keys(tmp_path):
    saved = _compose(["layer=3"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved, resolve=True))
    check_same_run(_compose(["layer=3"]), tmp_path)  # the same config: fine
    check_same_run(_compose(["layer=3", "training.checkpoint_every=5", "device=cpu", "logger=none"]), tmp_path)  # neutral keys
    with pytest.raises(ConfigError, match=r"sae\.k: 32 there, 16 now") as err:
        check_same_run(_compose(["layer=3", "sae.k=16"]), tmp_path)
    assert "resume=false" in str(err.value)
    with pytest.raises(ConfigError, match=r"tokens: 300000 there, 400000 now"):
        check_same_run(_compose(["layer=3", "tokens=400000"]), tmp_path)
    check_same_run(_compose(["layer=3", "sae.k=16"]), tmp_path / "elsewhere")  # no saved config: nothing to compare


@pytest.mark.slow
def test_a_finished_folder_whose_saved_config_differs_is_not_reported_as_this_run(tmp_path):
    cmd = [sys.executable, "-m", "saes.train", f"hydra.run.dir={tmp_path}", *TINY]

    def run(*extra):
        return subprocess.run([*cmd, *extra], cwd=REPO, capture_output=True, text=True, timeout=600)

    assert run().returncode == 0
    assert "already finished" in run("training.checkpoint_every=4096").stdout  # a neutral change
    config = tmp_path / "config.yaml"
    config.write_text(config.read_text().replace("  k: 32\n", "  k: 31\n"))  # as if a YAML default changed since
    again = run()
    assert again.returncode == 2, again.stdout + again.stderr
    assert "holds a run of another config (sae.k: 31 there, 32 now)" in again.stderr
    assert "already finished" not in again.stdout
