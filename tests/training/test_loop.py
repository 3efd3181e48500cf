"""The training loop reads any ``ActivationStream``: here batches held in memory (what an on-disk
cache or rows from other ranks will be), no model. It must train exactly as stepping by hand does,
and a stop signal must checkpoint the stream's own state."""

from __future__ import annotations

import os
import signal
import threading
import time

import torch
from omegaconf import OmegaConf

from saes.activations import ActivationStream
from saes.sae import build
from saes.distributed.placement import Placement
from saes.training.checkpoint import load_state
from saes.training.loop import train_loop
from saes.training.metrics_log import MetricsLog
from saes.training.plan import MemberSpec
from saes.training.trainer import SAETrainer
from saes.training.wiring import Member, TrainingRun

HOOK = "blocks.0.hook_resid_post"
B, D = 32, 16


class MemoryStream:
    """An ``ActivationStream`` over batches in memory; ``on_batch(i)`` runs before batch ``i``."""

    def __init__(self, batches: list[dict[str, torch.Tensor]], on_batch=None):
        self.batches, self.position, self.on_batch, self.closed = batches, 0, on_batch, False

    def next_batch(self):
        if self.position >= len(self.batches):
            return None
        if self.on_batch is not None:
            self.on_batch(self.position)
        self.position += 1
        return self.batches[self.position - 1]

    def sample(self, rows, seed):
        return {HOOK: torch.cat([b[HOOK] for b in self.batches])[:rows]}

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]

    def close(self):
        self.closed = True


def _cfg(tokens: int):
    return OmegaConf.create({
        "tokens": tokens, "seed": 0, "model": {"source": "none", "name": "none"},
        "data": {"context_size": 8, "path": None, "source": "pydocs", "exclude_special": True},
        "logger": {"kind": "none", "log_every": 2},
        "training": {"eval_every": 0, "checkpoint_every": 0, "save_every": 0, "batch_size": B, "dead_tokens": 10_000,
                     "normalize_activations": True, "b_dec_init": "mean"},
        "optimizer": {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "warmup_fraction": 0.1, "schedule": "cosine",
                      "final_lr_ratio": 0.1, "grad_clip": 1.0},
    })


def _trainer(cfg) -> SAETrainer:
    torch.manual_seed(0)
    sae = build({"architecture": "topk", "d_sae": 64, "k": 4}, d_in=D)
    return SAETrainer(sae, cfg.optimizer, cfg.training, cfg.tokens, (HOOK,))


def _run(tmp_path, cfg, stream) -> TrainingRun:
    spec = MemberSpec(".", 0, (HOOK,), (HOOK,), {"architecture": "topk", "d_sae": 64, "k": 4})
    trainer = _trainer(cfg)
    trainer.initialize_from_data(stream.sample(256, 0), torch.Generator().manual_seed(0))
    member = Member(spec, tmp_path, trainer, MetricsLog(tmp_path, cfg.logger, "test", {}))
    return TrainingRun(cfg, tmp_path, None, None, stream, [member], None, {}, None, threading.Lock(), Placement(), False,
                       time.perf_counter())


def _batches(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(D, D, generator=g)
    return [{HOOK: torch.randn(B, D, generator=g) @ mix} for _ in range(n)]


def test_the_loop_trains_from_any_stream_exactly_as_stepping_by_hand(tmp_path):
    batches = _batches(12)
    cfg = _cfg(tokens=B * 12)
    stream = MemoryStream(batches)
    assert isinstance(stream, ActivationStream)
    run = _run(tmp_path, cfg, stream)
    assert train_loop(run) == "finished"
    by_hand = _trainer(cfg)
    by_hand.initialize_from_data(stream.sample(256, 0), torch.Generator().manual_seed(0))
    for batch in batches:
        by_hand.step(batch)
    trained = run.members[0].trainer
    assert trained.tokens == by_hand.tokens == B * 12 and trained.step_count == 12
    for name, param in trained.sae.named_parameters():
        assert torch.equal(param, dict(by_hand.sae.named_parameters())[name]), name
    logged = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(logged) == 6  # every logger.log_every=2 steps


def test_a_stop_signal_checkpoints_the_stream_state_and_the_sae(tmp_path):
    cfg = _cfg(tokens=B * 12)
    stream = MemoryStream(_batches(12), on_batch=lambda i: os.kill(os.getpid(), signal.SIGUSR1) if i == 5 else None)
    run = _run(tmp_path, cfg, stream)
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the loop's handler replaces it, then restores it
    try:
        status = train_loop(run)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert status == "preempted"
    state = load_state(tmp_path)
    assert state["stream"] == {"position": 6}  # the batch fetched with the signal was trained on
    assert state["members"]["."]["step_count"] == 6
    assert (tmp_path / "sae" / "cfg.json").exists()
