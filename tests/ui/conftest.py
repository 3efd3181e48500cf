"""Fixtures of the web UI tests: ui/ set up by scripts/setup_ui.sh (npm ci, build, Chromium)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ..conftest import REPO

UI = REPO / "ui"
ARTIFACTS = REPO / "outputs" / "test-artifacts" / "ui"
SKIP_CODES = {3: "no Node.js/npm", 4: "no Chromium and no way to install it"}


def setup_ui(*flags: str) -> None:
    """Run scripts/setup_ui.sh; skip (fail under CI) when Node.js or Chromium cannot be had."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup_ui.sh"), *flags], check=False, capture_output=True, text=True
    )
    if proc.returncode in SKIP_CODES:
        reason = f"{SKIP_CODES[proc.returncode]}: {proc.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/setup_ui.sh {' '.join(flags)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )


@pytest.fixture(scope="session")
def ui_deps() -> Path:
    """ui/ with its npm dependencies installed."""
    setup_ui()
    return UI


@pytest.fixture(scope="session")
def ui_built() -> Path:
    """ui/dist built from the current sources, and Chromium at /usr/bin/chromium."""
    setup_ui("--build", "--browser")
    return UI / "dist"
