"""Live inference under concurrency: the server calls ``LiveSAE.activations`` from its thread
pool, so concurrent texts must each get their own activations."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from server.live import LiveSAE

TEXTS = [f"text number {i}: " + " ".join(["alpha", "beta", "gamma", "delta"][i % 4] for _ in range(5 + i)) for i in range(8)]


def test_concurrent_texts_each_get_their_own_activations(analyzed):
    live = LiveSAE(analyzed.run)
    expected = {text: live.activations(text) for text in TEXTS}  # one at a time: the reference
    jobs = [TEXTS[i % len(TEXTS)] for i in range(100)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(live.activations, jobs))
    for text, got in zip(jobs, results):
        assert got.tokens == expected[text].tokens
        assert torch.equal(got.acts_TF, expected[text].acts_TF), text


def test_a_device_the_machine_cannot_use_stops_the_server_at_start_up_by_name():
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "SAES_DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", "import server.app"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "saes server: error: SAES_DEVICE=cuda:" in proc.stderr and "SAES_DEVICE=cpu" in proc.stderr
    assert "Traceback" not in proc.stderr
