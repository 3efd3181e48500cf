"""``distributed=data`` and ``distributed=saes`` at the trainer level, on real gloo ranks: two
ranks at batch B/2 each must train the SAE one process trains at batch B on the same rows, and
SAEs split over ranks must each train as they would alone on the global batch."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from saes.config import DistributedStrategy
from saes.distributed.context import RankInfo
from saes.distributed.placement import Placement, assign_members
from saes.distributed.sync import DataParallelSync
from saes.sae import build
from saes.training.trainer import SAETrainer

from tests.distributed.harness import run_ranks

HOOK = "blocks.0.hook_resid_post"
B, D, STEPS = 36, 16, 6  # B divisible by 2 and 3 ranks


def _cfg(dead_tokens: int = 10_000):
    return OmegaConf.create({
        "training": {"batch_size": B, "dead_tokens": dead_tokens, "normalize_activations": True, "b_dec_init": "mean"},
        "optimizer": {"lr": 3e-2, "betas": [0.9, 0.999], "eps": 1e-8, "warmup_fraction": 0.1, "schedule": "cosine",
                      "final_lr_ratio": 0.1, "grad_clip": 0.05},
    })


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(B, D, generator=g) * 3 + 1 for _ in range(STEPS)]


def _trainer(options: dict, cfg, sync=None) -> SAETrainer:
    torch.manual_seed(0)
    sae = build(options, d_in=D)
    trainer = SAETrainer(sae, cfg.optimizer, cfg.training, B * STEPS, (HOOK,), sync=sync)
    trainer.initialize_from_data({HOOK: torch.cat(_batches())}, torch.Generator().manual_seed(0))
    return trainer


TOPK_AUXK = {"architecture": "topk", "d_sae": 64, "k": 4, "aux_k": 8, "aux_coef": 0.5}


def _data_rank(rank: int, world: int, options: dict, dead_tokens: int) -> dict:
    trainer = _trainer(options, _cfg(dead_tokens), DataParallelSync())
    losses = []
    for x in _batches():
        share = x.chunk(world)[rank]
        out = trainer.step({HOOK: share})
        losses.append(Placement(DistributedStrategy.data, RankInfo(rank, world, rank)).mean_over_ranks(
            [out.loss.item(), *out.losses.values()]))
    return {"losses": losses, "state": {k: v.clone() for k, v in trainer.sae.state_dict().items()},
            "tokens": trainer.tokens, "dead": trainer.dead_mask().clone()}


@pytest.mark.parametrize("dead_tokens", [10_000, 40], ids=["no-dead", "auxk"])
def test_data_parallel_two_ranks_at_half_batch_train_the_one_process_sae(dead_tokens):
    reference = _trainer(TOPK_AUXK, _cfg(dead_tokens))
    ref_losses, auxk_steps = [], 0
    for x in _batches():
        out = reference.step({HOOK: x})
        ref_losses.append([out.loss.item(), *out.losses.values()])
        auxk_steps += "auxk" in out.losses
    assert (auxk_steps > 0) == (dead_tokens == 40)  # the AuxK case really has dead latents and an AuxK term
    ranks = run_ranks(_data_rank, 2, TOPK_AUXK, dead_tokens)
    for r in ranks:
        assert r["tokens"] == reference.tokens == B * STEPS  # the token count is the global batch's
        torch.testing.assert_close(r["dead"], reference.dead_mask())
        for got, want in zip(r["losses"], ref_losses):
            assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
        for name, want in reference.sae.state_dict().items():
            torch.testing.assert_close(r["state"][name], want, rtol=1e-4, atol=1e-5, msg=name)
    # the replicas stay identical to each other (bit for bit: the same reduced gradients)
    for name in ranks[0]["state"]:
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name


SWEEP = [dict(TOPK_AUXK, d_sae=d, k=k) for d, k in ((64, 4), (32, 2), (48, 4), (96, 8), (16, 2))]


def _saes_rank(rank: int, world: int) -> dict:
    placement = Placement(DistributedStrategy.saes, RankInfo(rank, world, rank))
    owner = assign_members([float(o["d_sae"]) for o in SWEEP], world)
    mine = {i: _trainer(SWEEP[i], _cfg()) for i in range(len(SWEEP)) if owner[i] == rank}
    for x in _batches():
        batch = placement.global_batch({HOOK: x.chunk(world)[rank]})
        for t in mine.values():
            t.step(batch)
    return {i: {k: v.clone() for k, v in t.sae.state_dict().items()} for i, t in mine.items()}


@pytest.mark.parametrize("world", [2, 3])
def test_saes_split_over_ranks_each_train_as_alone_on_the_global_batch(world):
    ranks = run_ranks(_saes_rank, world)
    owned = [i for r in ranks for i in r]
    assert sorted(owned) == list(range(len(SWEEP)))  # every SAE trained exactly once
    for r in ranks:
        for i, state in r.items():
            alone = _trainer(SWEEP[i], _cfg())
            for x in _batches():
                alone.step({HOOK: x})
            for name, want in alone.sae.state_dict().items():
                torch.testing.assert_close(state[name], want, rtol=1e-5, atol=1e-6, msg=f"SAE {i} {name}")


def test_assignment_balances_cost_without_divisibility():
    costs = [8.0, 7.0, 6.0, 5.0, 4.0]
    owner = assign_members(costs, 3)
    loads = [sum(c for c, o in zip(costs, owner) if o == r) for r in range(3)]
    assert sorted(loads) == [8.0, 11.0, 11.0]  # {8} {7,4} {6,5}: no split of these has a max load under 11
    assert assign_members([1.0] * 5, 2).count(0) == 3  # 5 equal SAEs on 2 ranks: 3 and 2
    assert set(assign_members([1.0] * 4, 4)) == {0, 1, 2, 3}
