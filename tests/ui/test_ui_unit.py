"""The UI's own unit tests (vitest: token highlighting, escaping, histogram rows, routes)."""

from __future__ import annotations

import os
import subprocess


def test_vitest(ui_deps):
    env = {**os.environ, "CI": "true", "NO_COLOR": "1"}
    proc = subprocess.run(
        ["npm", "test", "--silent"], check=False, cwd=ui_deps, capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, f"npm test failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-3000:]}"
    assert " passed" in proc.stdout and " failed" not in proc.stdout
