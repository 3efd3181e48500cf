"""Distributed SAE steps: distributed=data|saes|latents on 1 vs 2 real gloo ranks, and the
communication volume each strategy would need for Llama-3.1-8B on 8 GPUs.

    .venv/bin/python benchmarks/distributed.py [--batch 4096] [--d-in 576] [--expansion 8] [--k 32]
        [--n-saes 4] [--warmup 10] [--steps 20] [--strategies data,saes,latents]

Measured (first table). Each run spawns 1 or 2 processes joined in a gloo group
(tests/distributed/harness.py ``run_ranks``), each with ``torch.set_num_threads(1)`` -- the
1-rank baseline too, so that it uses one core and 2 ranks two (a fair comparison on 2 cores). Every rank builds
its trainers as ``saes.training.wiring`` does (``Placement.owned``/``step_sync``,
``LatentShardedSAE.build`` under ``latents``, ``share_initialisation``) and runs, per step,
``Placement.global_batch`` then ``SAETrainer.step`` of each of its SAEs, on synthetic activations
of width ``--d-in`` (576: SmolLM2-135M's d_model), Gaussian, pre-generated: the model forward and
the activation stream are not part of this measurement, nor are the training loop's two 4-byte stop
flags (``Placement.agree``) and logging. TopK SAEs (k=32, 8x latents, AuxK off: ``training.dead_tokens``
is 1e15, so no latent counts as dead), Adam, grad clipping, float32.
- ``data``: one SAE, each rank ``B / ranks`` rows, gradients all-reduced;
- ``saes``: ``--n-saes`` SAEs (one hook each, "layers"), rows all-gathered, split by ``assign_members``;
- ``latents``: one SAE sharded over its latents, rows all-gathered, exact cross-shard top-k.
On 1 rank data and latents are the same single-process SAE (one run, shown on both rows).
rows/s = global batch rows x timed steps / the slowest rank's wall time (after ``--warmup``
steps); SAE rows/s = rows/s x SAEs trained per step. "in collectives": wall time per step inside the
counted collectives (waiting for the slower rank included; max over ranks). CPU/wall: the process's
CPU time over the timed wall time (min over ranks; gloo's threads included): well under 1 means the
rank waited or was descheduled (other load on the cores: see the load average printed).

Bytes: in every rank process the collectives of ``torch.distributed`` (all_reduce, all_gather,
all_gather_into_tensor, broadcast, gather, scatter, reduce, reduce_scatter(_tensor), all_to_all_single)
are wrapped by counters that add ``numel() * element_size()`` of the tensor the rank hands in
and call the original. "payload" = those bytes per rank per step (for an all-gather: the rank's own
piece; for an all-reduce: the buffer). "sent" = what a ring algorithm (NCCL's) makes each rank send
for that payload: all-reduce 2(n-1)/n x buffer, all-gather (n-1) x piece, reduce-scatter (n-1)/n x
input, broadcast/gather/scatter/reduce (n-1)/n (rank average); gloo's own algorithms may differ.
The max over ranks is shown.

Analytic (second table, ``comm_volume``): bytes sent per rank per step with the same ring rule,
from what saes/distributed/*.py communicates (no measurement), and the SAE training state per rank
(fp32 params + grads + two Adam moments = 16 bytes per parameter).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import saes  # noqa: E402,F401  (before torch: its CPU thread settings)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from saes.config import DistributedStrategy  # noqa: E402
from saes.distributed.context import RankInfo  # noqa: E402
from saes.distributed.placement import Placement  # noqa: E402
from saes.sae import build, make_config  # noqa: E402
from saes.training.trainer import SAETrainer  # noqa: E402
from tests.distributed.harness import run_ranks  # noqa: E402

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "gather", "scatter", "reduce",
               "reduce_scatter", "reduce_scatter_tensor", "all_to_all_single")
MB = 1e6


def ring_factor(name: str, n: int) -> float:
    """Bytes a rank sends per payload byte of collective ``name`` over ``n`` ranks (ring)."""
    if name == "all_reduce":
        return 2 * (n - 1) / n
    if name.startswith("all_gather"):
        return n - 1
    return (n - 1) / n


def _payload(name: str, args: tuple, kwargs: dict) -> int:
    """Bytes of the tensor(s) this rank hands to collective ``name``."""
    if name in ("all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor", "all_to_all_single"):
        t = args[1] if len(args) > 1 else kwargs.get("input_tensor", kwargs.get("input"))
    elif name == "scatter":
        t = args[1] if len(args) > 1 else kwargs.get("scatter_list")
    else:
        t = args[0] if args else kwargs.get("tensor")
    parts = t if isinstance(t, (list, tuple)) else [t]
    return sum(p.numel() * p.element_size() for p in parts if torch.is_tensor(p))


class Meter:
    """Calls and bytes of each collective, by payload size, while ``on``."""

    def __init__(self, world: int):
        self.world, self.on = world, False
        self.calls: dict[tuple[str, int], int] = {}  # (name, payload bytes) -> calls
        self.seconds = 0.0  # wall time inside the collectives (waiting for the other rank included)

    def install(self) -> None:
        for name in COLLECTIVES:
            if hasattr(dist, name):
                setattr(dist, name, self._wrap(name, getattr(dist, name)))

    def _wrap(self, name: str, original):
        def counted(*args, **kwargs):
            if not self.on:
                return original(*args, **kwargs)
            key = (name, _payload(name, args, kwargs))
            self.calls[key] = self.calls.get(key, 0) + 1
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
        return counted

    def totals(self, steps: int) -> tuple[float, float]:
        """``(payload, sent)`` bytes per step."""
        payload = sum(size * c for (_, size), c in self.calls.items()) / steps
        sent = sum(size * c * ring_factor(name, self.world) for (name, size), c in self.calls.items()) / steps
        return payload, sent


def _cfg(batch: int):
    training = {"batch_size": batch, "dead_tokens": 10**15, "normalize_activations": True, "b_dec_init": "mean"}
    return OmegaConf.create({"training": training, "optimizer": OmegaConf.load(REPO / "saes/conf/optimizer/adam.yaml")})


def _global_batch(i: int, hooks: list[str], batch: int, d: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + i)
    return {h: torch.randn(batch, d, generator=g) * 2 + 0.5 for h in hooks}


def rank_run(rank: int, world: int, strategy: str, a: dict) -> dict:
    """One rank of one run: build, warm up, time ``a['steps']`` steps, count their collectives."""
    placement = Placement(DistributedStrategy(strategy), RankInfo(rank, world, rank))
    meter = Meter(world)
    meter.install()
    n_saes = a["n_saes"] if strategy == "saes" else 1
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(n_saes)]
    options = {"architecture": "topk", "d_sae": a["d_in"] * a["expansion"], "k": a["k"]}
    cfg = _cfg(a["batch"])
    batches = []
    for i in range(2):  # two distinct batches, cycled; this rank's share of each
        full = _global_batch(i, hooks, a["batch"], a["d_in"])
        batches.append({h: x.chunk(world)[rank].contiguous() for h, x in full.items()})
    mine = placement.owned([SimpleNamespace(hook=h, sae_options=options) for h in hooks], a["d_in"])
    trainers = []
    for spec in mine:
        torch.manual_seed(0)
        if placement.sharded:
            from saes.distributed.latents import LatentShardedSAE

            sae = LatentShardedSAE.build(make_config(options), a["d_in"])
        else:
            sae = build(options, a["d_in"])
        trainer = SAETrainer(sae, cfg.optimizer, cfg.training, a["batch"] * 10_000, (spec.hook,), sync=placement.step_sync())
        trainer.initialize_from_data(batches[0], torch.Generator().manual_seed(1 + rank))
        placement.share_initialisation(trainer)
        trainers.append(trainer)

    def step(i: int) -> None:
        batch = placement.global_batch(batches[i % 2])
        for t in trainers:
            t.step(batch)

    for i in range(a["warmup"]):
        step(i)
    if world > 1:
        dist.barrier()
    meter.on = True
    t0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(a["steps"]):
        step(i)
    if world > 1:
        dist.barrier()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    meter.on = False
    payload, sent = meter.totals(a["steps"])
    return {"seconds": seconds, "saes": len(trainers), "latents": trainers[0].sae.d_sae if trainers else 0,
            "payload": payload, "sent": sent, "comm_s": meter.seconds / a["steps"], "cpu": cpu / seconds, "calls": {k: c / a["steps"] for k, c in meter.calls.items()}}


def _fmt_bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def measure(a: dict) -> list[dict]:
    rows, single = [], None
    for strategy in a["strategies"]:
        for world in (1, 2):
            reuse = world == 1 and strategy in ("data", "latents")
            if reuse and single is not None:
                ranks = single
            else:
                t0 = time.perf_counter()
                ranks = run_ranks(rank_run, world, strategy, a)
                print(f"  ran {strategy} on {world} rank(s) in {time.perf_counter() - t0:.0f}s", flush=True)
                if reuse:
                    single = ranks
            seconds = max(r["seconds"] for r in ranks)
            lead = ranks[0]["calls"]  # every rank calls the same collectives (sizes may differ by a row)
            by_name: dict[str, list[str]] = {}
            for (name, size), c in sorted(lead.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
                by_name.setdefault(name, []).append(f"{c:g}x {_fmt_bytes(size)}" if c != 1 else _fmt_bytes(size))
            ops = "; ".join(f"{name}: {' + '.join(sizes)}" for name, sizes in by_name.items())
            n_saes = a["n_saes"] if strategy == "saes" else 1
            model = comm_volume(strategy, a["d_in"], a["d_in"] * a["expansion"], world, a["batch"], a["k"], n_saes,
                                act_bytes=4)
            rows.append({"strategy": strategy, "world": world, "step_s": seconds / a["steps"],
                         "rows_s": a["batch"] * a["steps"] / seconds, "saes": n_saes,
                         "saes_per_rank": "/".join(str(r["saes"]) for r in ranks),
                         "latents": "/".join(str(r["latents"]) for r in ranks),
                         "payload": max(r["payload"] for r in ranks), "sent": max(r["sent"] for r in ranks),
                         "model": model["sent"] if world > 1 else 0.0, "ops": ops,
                         "comm_s": max(r["comm_s"] for r in ranks), "cpu": min(r["cpu"] for r in ranks)})
    return rows


def print_measured(rows: list[dict]) -> None:
    print("\n| strategy | ranks | SAEs on each rank | latents on each rank | step ms | in collectives ms | CPU/wall | rows/s | SAE rows/s | "
          "vs 1 rank | payload/step/rank | sent/step/rank (ring) | analytic sent | collectives per step (calls x payload) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    base = {}
    for r in rows:
        base.setdefault(r["strategy"], r["rows_s"])
        print(f"| {r['strategy']} | {r['world']} | {r['saes_per_rank']} | {r['latents']} | {1000 * r['step_s']:.0f} | {1000 * r['comm_s']:.0f} | {r['cpu']:.2f} | "
              f"{r['rows_s']:,.0f} | {r['rows_s'] * r['saes']:,.0f} | {r['rows_s'] / base[r['strategy']]:.2f}x | "
              f"{_fmt_bytes(r['payload'])} | {_fmt_bytes(r['sent'])} | {_fmt_bytes(r['model'])} | {r['ops'] or '-'} |")


def comm_volume(strategy: str, d: int, m: int, n: int, B: int, k: int, hooks: int = 1, act_bytes: int = 2,
                grad_bytes: int = 4, auxk: bool = False) -> dict:
    """Bytes sent per rank per step (ring) by ``strategy`` on ``n`` ranks for TopK SAEs of ``d`` x
    ``m`` latents, global batch ``B`` rows, activations of ``act_bytes``, gradients of ``grad_bytes``;
    ``hooks``: SAEs trained (``saes``: one hook each); ``auxk``: AuxK engaged (some dead latents;
    k_aux = d/2, its worst case). Returns ``sent``, ``state`` (per rank) and ``saes``."""
    ar, ag = 2 * (n - 1) / n, n - 1
    params = 2 * d * m + m + d
    k_aux = d // 2
    if strategy == "data":  # gradient all-reduce; batch stats (d + 2 float64); fired mask (uint8); dead count none
        sent = ar * (params * grad_bytes + (d + 2) * 8 + m)
        state, saes = 16 * params, 1
    elif strategy == "saes":  # all-gather of each hook's rows; nothing else crosses ranks
        sent = hooks * ag * (B // n) * d * act_bytes
        state, saes = 16 * params * math.ceil(hooks / n), hooks
    else:  # latents
        m_local = -(-m // n)
        sent = ag * (B // n) * d * act_bytes  # rows all-gathered
        sent += ag * B * min(k, m_local) * 4  # top-k candidate values (float32, padded to min(k, largest shard))
        sent += ar * (2 if auxk else 1) * B * d * 4  # partial reconstruction [B, d] fp32 (+ AuxK's, stacked)
        sent += ar * (d * grad_bytes + 4 + 8)  # b_dec gradient (grad_summed), grad-norm square, dead count
        if auxk:
            sent += ag * B * k_aux * 4  # AuxK candidates
        state, saes = 16 * (params - d) / n + 16 * d, 1
    return {"sent": sent, "state": state, "saes": saes}


def print_analytic(d: int, n: int, B: int, k: int, hooks: int, widths: tuple[int, ...], gpu_gb: float) -> None:
    print(f"\nAnalytic: Llama-3.1-8B (d {d}) on {n} GPUs, global batch {B:,} tokens, TopK k={k}, bf16 activations, "
          f"fp32 gradients and reconstructions; saes = {hooks} layers' SAEs over {n} ranks ({-(-hooks // n)} per rank)\n")
    print("| latents | strategy | sent/step/rank | SAE steps per step | sent per SAE step | SAE state per rank |")
    print("|---|---|---|---|---|---|")
    table: dict[int, dict[str, tuple[float, float]]] = {}
    for m in widths:
        for strategy, kw in (("data", {}), ("saes", {"hooks": hooks}), ("latents", {}), ("latents+AuxK", {"auxk": True})):
            v = comm_volume(strategy.split("+")[0], d, m, n, B, k, **kw)
            table.setdefault(m, {})[strategy] = (v["sent"] / v["saes"], v["state"])
            print(f"| {m:,} | {strategy} | {_fmt_bytes(v['sent'])} | {v['saes']} | {_fmt_bytes(v['sent'] / v['saes'])} | "
                  f"{_fmt_bytes(v['state'])} |")
    print(f"\nWho wins (least sent per SAE step among strategies whose SAE state fits {gpu_gb:g} GB per GPU; "
          "AuxK rows aside, they add to latents only while latents are dead):")
    for m, rows in table.items():
        fits = {name: sent for name, (sent, state) in rows.items() if state <= gpu_gb * 1e9 and "+" not in name}
        too_big = [name for name, (_, state) in rows.items() if state > gpu_gb * 1e9 and "+" not in name]
        parts = []
        for label, names in (("one SAE", ("data", "latents")), (f"{hooks} SAEs", ("data", "saes", "latents"))):
            ok = sorted((fits[x], x) for x in names if x in fits)
            if not ok:
                parts.append(f"{label}: none fits")
                continue
            runner = f", {ok[1][0] / ok[0][0]:.1f}x less than {ok[1][1]}" if len(ok) > 1 else ""
            parts.append(f"{label}: {ok[0][1]} ({_fmt_bytes(ok[0][0])} per SAE step{runner})")
        note = f"; over {gpu_gb:g} GB per rank: {', '.join(too_big)}" if too_big else ""
        print(f"- {m:,} latents: " + "; ".join(parts) + note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4096, help="global batch rows per step")
    parser.add_argument("--d-in", type=int, default=576, help="activation width (SmolLM2-135M d_model)")
    parser.add_argument("--expansion", type=int, default=8, help="latents = expansion x d_in")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--n-saes", type=int, default=4, help="SAEs (hooks) under distributed=saes")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--strategies", default="data,saes,latents")
    parser.add_argument("--gpu-gb", type=float, default=80, help="GPU memory for the analytic fit (H100: 80)")
    args = parser.parse_args()
    a = dict(vars(args), strategies=args.strategies.split(","))
    started = time.perf_counter()
    print(f"CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; 1 torch thread per rank; "
          f"B={args.batch}, d_in={args.d_in}, latents={args.d_in * args.expansion}, k={args.k}, "
          f"saes: {args.n_saes} SAEs; {args.warmup} warm-up + {args.steps} timed steps; synthetic activations "
          f"(no model forward)", flush=True)
    print_measured(measure(a))
    print_analytic(4096, 8, 8192, 64, 32, (32_768, 1_048_576), args.gpu_gb)
    print(f"\ntotal {time.perf_counter() - started:.0f}s; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
