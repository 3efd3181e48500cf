"""``distributed=latents`` against the single-process SAE: real gloo ranks (tests/distributed/
harness.py) each hold a shard made by ``LatentShardedSAE.from_full`` of the same full TopK /
BatchTopK SAE; the reference is that full SAE's own ``training_forward`` on the same batch, run
in this (the pytest) process. Each world runs every case in one launch (module-scoped fixture).

Worlds: 2 ranks with d_sae=64 (even shards) and 4 ranks with d_sae=62 (shards 16, 16, 15, 15).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from saes.distributed.latents import UNSUPPORTED, LatentShardedSAE, shard_bounds
from saes.errors import ConfigError
from saes.sae import build, make_config
from saes.sae.base import StepInput
from tests.distributed.harness import run_ranks

D_IN, B, K = 16, 32, 4
RTOL, ATOL = 1e-5, 1e-6
PARAMS = ("W_enc_DF", "b_enc_F", "W_dec_FO", "b_dec_O")
SHARDED = {"W_enc_DF": 1, "b_enc_F": 0, "W_dec_FO": 0}

# One training_forward + backward each; "dead": which latents are dead (AuxK engages with aux_coef > 0).
CASES: dict[str, dict[str, Any]] = {
    "topk": {"arch": "topk"},
    "topk_anneal": {"arch": "topk", "opts": {"k_start": 8, "k_anneal_fraction": 0.5}, "progress": 0.25},
    "topk_auxk_spread": {"arch": "topk", "opts": {"aux_coef": 0.5}, "dead": "spread"},
    "topk_auxk_first20": {"arch": "topk", "opts": {"aux_coef": 0.5}, "dead": "first20"},  # some shards have none
    "topk_auxk_few": {"arch": "topk", "opts": {"aux_coef": 0.5}, "dead": "few"},  # fewer dead than aux_k
    "batchtopk": {"arch": "batchtopk"},  # first threshold update
    "batchtopk_auxk_ema": {"arch": "batchtopk", "opts": {"aux_coef": 0.5, "threshold_rate": 0.2}, "dead": "spread",
                           "threshold": 0.3},
    # the latents of the upper half never win: their shards select nothing (empty sparse products)
    "topk_silent_shards": {"arch": "topk", "opts": {"aux_coef": 0.5}, "dead": "spread", "silent": True},
    "batchtopk_silent_shards": {"arch": "batchtopk", "silent": True},
    "transcoder_auxk": {"arch": "topk", "opts": {"aux_coef": 0.5}, "dead": "first20", "d_out": 12},
}
TRAIN_CASES = {"topk": {"arch": "topk", "opts": {"aux_coef": 0.5}},
               "batchtopk": {"arch": "batchtopk", "opts": {"aux_coef": 0.5, "threshold_rate": 0.3}}}
STEPS, LR, MAX_NORM, DEAD_TOKENS = 3, 1e-2, 1e-2, B


def _full(case: dict[str, Any], d_sae: int):
    """The full SAE of a case, deterministic (the same in every process)."""
    sae = build({"architecture": case["arch"], "d_sae": d_sae, "k": K, **case.get("opts", {})}, D_IN, case.get("d_out"))
    g = torch.Generator().manual_seed(7)
    sae.initialize(g)
    with torch.no_grad():  # non-zero biases, so that their gradients and the centering matter
        sae.b_enc_F.normal_(0, 0.1, generator=g)
        sae.b_dec_O.normal_(0, 0.1, generator=g)
        if case.get("silent"):
            sae.b_enc_F[d_sae // 2 :] -= 50.0
        if "threshold" in case:
            sae.threshold.fill_(case["threshold"])
            sae.threshold_updates.fill_(5)
    return sae


def _batch(case: dict[str, Any], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D_IN, generator=g)
    return x, (torch.randn(B, case["d_out"], generator=g) if "d_out" in case else None)


def _dead(kind: str | None, d_sae: int) -> torch.Tensor | None:
    if kind is None:
        return None
    dead = torch.zeros(d_sae, dtype=torch.bool)
    if kind == "spread":
        dead = torch.rand(d_sae, generator=torch.Generator().manual_seed(3)) < 0.4
    elif kind == "first20":
        dead[:20] = True
    else:
        dead[[3, 17, 33, 50, 61]] = True
    return dead


# -- what each rank runs --------------------------------------------------------------------------
def _rank_steps(rank: int, world: int, d_sae: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, case in CASES.items():
        full = _full(case, d_sae)
        sharded = LatentShardedSAE.from_full(full)
        x, y = _batch(case)
        dead = _dead(case.get("dead"), d_sae)
        step = StepInput.single(x, y, dead_F=None if dead is None else dead[sharded.lo : sharded.hi],
                                progress=case.get("progress", 1.0))
        res = sharded.training_forward(step)
        res.loss.backward()
        out[name] = {"lo": sharded.lo, "hi": sharded.hi, "d_sae": sharded.d_sae, "loss": res.loss.detach(),
                     "losses": res.losses, "l0": res.l0, "y_hat": res.y_hat_BO, "fired": res.fired_F,
                     "grads": {p: getattr(sharded, p).grad.clone() for p in PARAMS},
                     "forward": sharded(x), "threshold": getattr(sharded.shard, "threshold", None)}
    out["train"] = {name: _rank_train(case, d_sae) for name, case in TRAIN_CASES.items()}
    gathered = LatentShardedSAE.from_full(_full(CASES["batchtopk_auxk_ema"], d_sae)).gather_full(dst=world - 1)
    out["gathered"] = None if gathered is None else gathered.state_dict()
    out["gathered_type"] = type(gathered).__name__
    built = LatentShardedSAE.build(make_config({"architecture": "batchtopk", "d_sae": d_sae, "k": K}), D_IN)
    built.initialize(torch.Generator().manual_seed(0))
    out["built"] = {"d_sae": built.d_sae, "lo": built.lo, "hi": built.hi, "state": built.state_dict(),
                    "names": set(dict(built.named_parameters())), "latent_axes": built.latent_axes()}
    return out


def _rank_train(case: dict[str, Any], d_sae: int) -> dict[str, Any]:
    sharded = LatentShardedSAE.from_full(_full(case, d_sae))
    opt = torch.optim.Adam(sharded.parameters(), lr=LR)
    since = torch.zeros(d_sae, dtype=torch.long)
    since[:10] = 1000  # dead at step 0
    since = since[sharded.lo : sharded.hi].clone()
    log = []
    for i in range(STEPS):
        x, _ = _batch(case, seed=100 + i)
        res = sharded.training_forward(StepInput.single(x, dead_F=since >= DEAD_TOKENS, progress=i / STEPS))
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        sharded.before_step()
        norm = sharded.clip_grad_norm_(MAX_NORM)
        log.append({"loss": res.loss.item(), "losses": res.losses, "norm": float(norm),
                        "grads": {p: getattr(sharded, p).grad.clone() for p in PARAMS}})
        opt.step()
        sharded.after_step()
        since += B
        since[res.fired_F] = 0
    gathered = sharded.gather_full(dst=0)
    return {"log": log, "lo": sharded.lo, "hi": sharded.hi,
            "params": {p: getattr(sharded, p).detach().clone() for p in PARAMS},
            "full": None if gathered is None else gathered.state_dict()}


# -- the single-process reference ---------------------------------------------------------------
def _ref_step(case: dict[str, Any], d_sae: int) -> dict[str, Any]:
    full = _full(case, d_sae)
    x, y = _batch(case)
    res = full.training_forward(StepInput.single(x, y, dead_F=_dead(case.get("dead"), d_sae),
                                                 progress=case.get("progress", 1.0)))
    res.loss.backward()
    with torch.no_grad():
        forward = full(x)
    return {"loss": res.loss.detach(), "losses": res.losses, "l0": res.l0, "y_hat": res.y_hat_BO, "fired": res.fired_F,
                "grads": {p: getattr(full, p).grad.clone() for p in PARAMS}, "forward": forward,
                "threshold": getattr(full, "threshold", None)}


def _ref_train(case: dict[str, Any], d_sae: int) -> dict[str, Any]:
    full = _full(case, d_sae)
    opt = torch.optim.Adam(full.parameters(), lr=LR)
    since = torch.zeros(d_sae, dtype=torch.long)
    since[:10] = 1000
    log = []
    for i in range(STEPS):
        x, _ = _batch(case, seed=100 + i)
        res = full.training_forward(StepInput.single(x, dead_F=since >= DEAD_TOKENS, progress=i / STEPS))
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        full.before_step()
        norm = torch.nn.utils.clip_grad_norm_(full.parameters(), MAX_NORM)
        log.append({"loss": res.loss.item(), "losses": res.losses, "norm": float(norm),
                        "grads": {p: getattr(full, p).grad.clone() for p in PARAMS}})
        opt.step()
        full.after_step()
        since += B
        since[res.fired_F] = 0
    return {"log": log, "params": {p: getattr(full, p).detach().clone() for p in PARAMS}, "full": full.state_dict()}


WORLDS = [(2, 64), (4, 62)]


@pytest.fixture(scope="module", params=WORLDS, ids=[f"world{w}-dsae{f}" for w, f in WORLDS])
def world_run(request) -> tuple[int, int, list[dict[str, Any]]]:
    world, d_sae = request.param
    return world, d_sae, run_ranks(_rank_steps, world, d_sae)


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = RTOL, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _slice(t: torch.Tensor, name: str, lo: int, hi: int) -> torch.Tensor:
    return t.narrow(SHARDED[name], lo, hi - lo) if name in SHARDED else t


# -- tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_step_matches_single_process(world_run, name: str) -> None:
    _, d_sae, ranks = world_run
    ref = _ref_step(CASES[name], d_sae)
    shards = [r[name] for r in ranks]
    assert [s["d_sae"] for s in shards] == [s["hi"] - s["lo"] for s in shards]
    # the same selection: the firing masks of the shards tile the single-process one
    assert torch.equal(torch.cat([s["fired"] for s in shards]), ref["fired"])
    assert 0 < ref["fired"].sum() < d_sae
    for s in shards:
        assert s["l0"] == pytest.approx(ref["l0"], abs=1e-9)
        assert torch.equal(s["loss"], shards[0]["loss"])  # identical on every rank
        _close(s["loss"], ref["loss"], "loss")
        _close(s["y_hat"], ref["y_hat"], "y_hat")
        _close(s["forward"], ref["forward"], "inference forward")
        assert s["losses"].keys() == ref["losses"].keys()
        for key, value in ref["losses"].items():
            assert s["losses"][key] == pytest.approx(value, rel=RTOL, abs=ATOL), key
        for p in PARAMS:
            _close(s["grads"][p], _slice(ref["grads"][p], p, s["lo"], s["hi"]), f"rank grad of {p}")
        assert torch.equal(s["grads"]["b_dec_O"], shards[0]["grads"]["b_dec_O"])
        if ref["threshold"] is not None:
            _close(s["threshold"], ref["threshold"], "threshold")
    if "dead" in CASES[name]:
        assert ref["losses"]["auxk"] > 0
    if CASES[name].get("silent"):
        assert not ref["fired"][d_sae // 2 :].any() and not ranks[-1][name]["grads"]["W_dec_FO"].any()
    if name == "topk_anneal":
        assert ref["losses"]["k"] == 6.0 and ref["l0"] > K


@pytest.mark.parametrize("name", list(TRAIN_CASES))
def test_training_steps_match_single_process(world_run, name: str) -> None:
    _, d_sae, ranks = world_run
    ref = _ref_train(TRAIN_CASES[name], d_sae)
    init = _full(TRAIN_CASES[name], d_sae)
    assert not torch.allclose(ref["params"]["W_dec_FO"], init.W_dec_FO, atol=1e-3)  # the steps moved the weights
    for i, expected in enumerate(ref["log"]):
        assert expected["norm"] > MAX_NORM  # clipping engaged
        assert "auxk" in expected["losses"]
        for r in ranks:
            got = r["train"][name]["log"][i]
            assert got["loss"] == pytest.approx(expected["loss"], rel=RTOL, abs=ATOL), f"step {i}"
            assert got["norm"] == pytest.approx(expected["norm"], rel=RTOL), f"step {i}"
            assert got["losses"].keys() == expected["losses"].keys()
            for key, value in expected["losses"].items():
                assert got["losses"][key] == pytest.approx(value, rel=RTOL, abs=ATOL), f"step {i} {key}"
            lo, hi = r["train"][name]["lo"], r["train"][name]["hi"]
            for p in PARAMS:
                _close(got["grads"][p], _slice(expected["grads"][p], p, lo, hi), f"step {i} clipped grad of {p}")
    for r in ranks:
        t = r["train"][name]
        for p in PARAMS:
            _close(t["params"][p], _slice(ref["params"][p], p, t["lo"], t["hi"]), f"trained {p}", atol=1e-5)
        assert torch.equal(t["params"]["b_dec_O"], ranks[0]["train"][name]["params"]["b_dec_O"])
    gathered = ranks[0]["train"][name]["full"]
    assert gathered.keys() == ref["full"].keys()
    for key, value in ref["full"].items():
        _close(gathered[key], value, f"gathered {key}", atol=1e-5)
    assert all(r["train"][name]["full"] is None for r in ranks[1:])


def test_gather_full_reproduces_the_weights(world_run) -> None:
    _, d_sae, ranks = world_run
    full = _full(CASES["batchtopk_auxk_ema"], d_sae)
    *others, last = ranks
    assert last["gathered_type"] == "BatchTopKSAE"
    assert all(r["gathered"] is None for r in others)
    expected = full.state_dict()
    assert last["gathered"].keys() == expected.keys() and "threshold" in expected
    for key, value in expected.items():
        assert torch.equal(last["gathered"][key], value), key


def test_build_and_initialize_make_independent_unit_norm_shards(world_run) -> None:
    _, d_sae, ranks = world_run
    shards = [r["built"] for r in ranks]
    assert [(s["lo"], s["hi"]) for s in shards] == [shard_bounds(d_sae, len(ranks), r) for r in range(len(ranks))]
    for s in shards:
        state = s["state"]
        assert state["shard.W_dec_FO"].shape == (s["d_sae"], D_IN)
        assert state["shard.W_enc_DF"].shape == (D_IN, s["d_sae"])
        _close(state["shard.W_dec_FO"].norm(dim=1), torch.ones(s["d_sae"]), "decoder row norms")
        assert torch.equal(state["shard.W_enc_DF"], state["shard.W_dec_FO"].T)  # tied init
        assert not state["shard.b_dec_O"].any() and not state["shard.b_enc_F"].any()
        # the trainer resets optimizer state by these names
        assert set(s["latent_axes"]) == {"shard.W_enc_DF", "shard.b_enc_F", "shard.W_dec_FO"} <= s["names"]
    first, second = shards[0]["state"]["shard.W_dec_FO"], shards[1]["state"]["shard.W_dec_FO"]
    assert not torch.allclose(first[: second.shape[0]], second, atol=1e-2)  # independent draws per rank


@pytest.mark.parametrize("d_sae,world", [(64, 2), (62, 4), (61, 4), (5, 5), (7, 3), (1000, 7)])
def test_shard_bounds_tile_the_latents(d_sae: int, world: int) -> None:
    bounds = [shard_bounds(d_sae, world, r) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == d_sae
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [hi - lo for lo, hi in bounds]
    assert sum(sizes) == d_sae and max(sizes) - min(sizes) <= 1 and min(sizes) > 0


@pytest.mark.parametrize("options", [{"architecture": "topk", "decoder_norm_selection": True},
                                     {"architecture": "batchtopk", "decoder_norm_selection": True},
                                     {"architecture": "relu"}, {"architecture": "matryoshka_batchtopk"}])
def test_unsupported_variants_are_rejected(options: dict[str, Any]) -> None:
    cfg = make_config({**options, "d_sae": 64, **({"k": K} if "topk" in options["architecture"] else {})})
    with pytest.raises(ConfigError, match=UNSUPPORTED):
        LatentShardedSAE.build(cfg, D_IN)
    if options.get("decoder_norm_selection"):
        with pytest.raises(ConfigError, match=UNSUPPORTED):
            LatentShardedSAE.from_full(build(dict(options, d_sae=64, k=K), D_IN))
