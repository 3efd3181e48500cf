"""TopK (+AuxK) SAE train-step throughput: ours vs a plain dense PyTorch step vs the FLOP floor.

    .venv/bin/python benchmarks/train_step.py                  # CPU: d 576, m 4608, k 32, 1024 tokens
    .venv/bin/python benchmarks/train_step.py --device cuda    # d 4096, m 32768 and 131072, k 64, 16384 tokens

One table, one run. Rows:
- ours: ``SAETrainer.step`` (training_forward, backward, decoder-grad projection, clipping, Adam,
  renormalisation) of the registered ``topk`` SAE;
- dense reference: the same math with dense autograd (benchmarks/reference_topk.py, which
  tests/sae/test_fast_paths.py checks against ours), same optimizer settings;
- floor: the step's matmul FLOPs at this machine's matmul rate, measured in this run on the encoder
  shape ``[B, d] @ [d, m]`` in the compute dtype. FLOPs per token: 2*d*m (encoder) + 8*d*k (the
  k-sparse encoder weight gradient, decoder forward, decoder weight gradient and the gradient of
  the k values) + 8*d*k_aux for AuxK (its selection reuses the encoder's pre-activations). It leaves
  out topk, Adam's memory traffic and every elementwise op, so it is a bound nobody reaches.

A fraction ``--dead`` of the latents is held dead on every step (AuxK on, k_aux = d/2).
Peak memory: CPU: the largest total of tensor bytes allocated during one step above what was live
before it (torch.profiler's memory timeline, which sees every allocation and free of the step,
inside ops too); CUDA: ``torch.cuda.max_memory_allocated`` minus the bytes allocated before the
step. Persistent state (weights, grads, Adam moments) is reported on the header line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import saes  # noqa: E402,F401  (before torch: its CPU thread settings apply to both rows)
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from reference_topk import DenseTopKSAE  # noqa: E402

from saes.sae import build  # noqa: E402
from saes.training.trainer import SAETrainer  # noqa: E402

DTYPES = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(B: int, d: int, m: int, device: torch.device, dtype: torch.dtype, reps: int) -> float:
    """Best FLOP/s of ``[B, d] @ [d, m]`` over ``reps`` runs."""
    a, b = torch.randn(B, d, device=device, dtype=dtype), torch.randn(d, m, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * B * d * m / best


def step_peak_bytes(step, device: torch.device) -> int | None:
    """Peak bytes allocated by one call of ``step`` above what was live before it."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
            step()
        live = peak = 0
        for _, action, _, size in prof._memory_profile().timeline:
            if action == Action.CREATE:
                live += size
            elif action == Action.DESTROY:
                live -= size
            peak = max(peak, live)
        return peak
    except Exception as err:  # private API: report n/a rather than fail the benchmark
        print(f"(peak memory unavailable: {err!r})", file=sys.stderr)
        return None


def time_steps(steps_by_name: dict, device: torch.device, steps: int, warmup: int) -> dict[str, float]:
    """Median seconds per step of each function, their steps interleaved (a shared machine's load
    drifts: interleaving gives every row the same conditions)."""
    for _ in range(warmup):
        for step in steps_by_name.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_size(d: int, m: int, k: int, B: int, args, device: torch.device) -> list[tuple[str, float, float | None]]:
    dtype = DTYPES[args.autocast]
    k_aux = d // 2
    gen = torch.Generator().manual_seed(0)
    xs = [x * (d**0.5 / x.norm(dim=1, keepdim=True)) for x in
          (torch.randn(B, d, generator=gen) @ torch.randn(d, d, generator=gen) / d**0.5 + 0.3 for _ in range(4))]
    xs = [x.to(device) for x in xs]
    dead_F = torch.zeros(m, dtype=torch.bool)
    dead_F[torch.randperm(m, generator=gen)[: int(args.dead * m)]] = True
    dead_F = dead_F.to(device)

    sae = build({"architecture": "topk", "d_sae": m, "k": k}, d_in=d)
    sae.initialize(generator=torch.Generator().manual_seed(1))
    sae = sae.to(device)
    opt_cfg = OmegaConf.create({"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8, "warmup_fraction": 0.0,
                                "schedule": "constant", "final_lr_ratio": 1.0, "grad_clip": 1.0})
    train_cfg = OmegaConf.create({"batch_size": B, "dead_tokens": 10**15, "normalize_activations": False,
                                  "b_dec_init": "zeros", "autocast": args.autocast if dtype else None})
    trainer = SAETrainer(sae, opt_cfg, train_cfg, total_tokens=10**12)
    counter = {"i": 0}

    def ours() -> None:
        trainer.tokens_since_fired_F.masked_fill_(dead_F, 10**15)  # hold the dead set fixed
        trainer.step({"x": xs[counter["i"] % len(xs)]})
        counter["i"] += 1

    dense = DenseTopKSAE(d, m, k, k_aux).to(device)
    dense.load_state_dict({n: getattr(sae, n).detach().clone() for n in ("W_enc_DF", "b_enc_F", "W_dec_FO", "b_dec_O")})
    adam = torch.optim.Adam(dense.parameters(), lr=1e-4, foreach=device.type != "cuda", fused=device.type == "cuda")

    def reference() -> None:
        dense.step(adam, xs[counter["i"] % len(xs)], dead_F, grad_clip=1.0, autocast_dtype=dtype)
        counter["i"] += 1

    fns = {"ours": ours, "dense reference": reference}
    seconds = time_steps(fns, device, args.steps, args.warmup)
    rows = [(name, seconds[name], step_peak_bytes(fn, device)) for name, fn in fns.items()]
    rate = matmul_rate(B, d, m, device, dtype or torch.float32, reps=max(5, args.steps))
    flops = B * (2 * d * m + 8 * d * k + (8 * d * k_aux if args.dead > 0 else 0))
    rows.append((f"floor ({rate / 1e12:.2f} TFLOP/s matmul)", flops / rate, None))
    state = sum(p.numel() * 4 * 4 for p in sae.parameters())  # weights, grads, 2 Adam moments (fp32)
    print(f"\nd {d}, m {m:,}, k {k}, {B:,} tokens/step, AuxK k_aux {k_aux} with {args.dead:.0%} of latents dead, "
          f"autocast {args.autocast}; persistent state {state / 2**20:,.0f} MiB")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--sizes", default=None,
                        help="d:m:k:tokens,...; default 576:4608:32:1024 on CPU, 4096:32768:64:16384,4096:131072:64:16384 on CUDA")
    parser.add_argument("--autocast", default=None, choices=sorted(DTYPES),
                        help="SAE compute dtype (training.autocast); default none on CPU, bfloat16 on CUDA")
    parser.add_argument("--dead", type=float, default=0.25, help="fraction of latents held dead (AuxK)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.autocast = args.autocast or ("bfloat16" if cuda else "none")
    sizes = args.sizes or ("4096:32768:64:16384,4096:131072:64:16384" if cuda else "576:4608:32:1024")
    threads = f"CPU, {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device) if cuda else threads}; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for spec in sizes.split(","):
        d, m, k, B = (int(v) for v in spec.split(":"))
        rows = bench_size(d, m, k, B, args, device)
        print("\n| step | tokens/s | ms/step | peak memory/step | vs dense |")
        print("|---|---|---|---|---|")
        dense_s = rows[1][1]
        for name, seconds, peak in rows:
            mem = "" if peak is None else f"{peak / 2**20:,.0f} MiB"
            print(f"| {name} | {B / seconds:,.0f} | {1e3 * seconds:.1f} | {mem} | {dense_s / seconds:.2f}x |")
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
