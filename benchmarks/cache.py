"""The activation cache: what writing it costs, how fast SAEs train from it, and whether they are as good.

    .venv/bin/python benchmarks/cache.py [--tokens 200000] [--sweep-tokens 50000] [--eval-tokens 16384] [--every 4]

Everything runs on the default model, layer and SAE (SmolLM2-135M, blocks.3.hook_resid_post,
TopK k 32, 4,608 latents, batch 1,024), in one run; each peer is measured next to what it is compared
with (a shared machine's speed drifts by tens of percent between minutes):

1. Write: ``python -m saes.cache tokens=<tokens>`` in float32 and in bfloat16 (``last_write_seconds``
   of the manifest: every forward, the storage conversion and the shard files, not model loading)
   vs the forward-only floor in this process: the same ``ModelForwards`` (stopped after block 3,
   32 contexts per forward, rows discarded) over the cache's first training contexts, half before
   and half after the writes. Overhead = write seconds per row / floor seconds per row - 1.
2. Training throughput from the cache. (a) vs the floor, in this process: the real loop
   (``saes.training.wiring.wire_run`` + ``saes.training.loop.train_loop``, timed like
   ``train_tokens_per_second``: from the first buffer fill to the end of the loop) from the float32
   and from the bfloat16 cache, alternating every ``--every`` batches with as many steps of the
   floor, ``SAETrainer.step`` alone on the float32 cache's rows pre-loaded as shuffled in-memory
   batches (same config and token budget; a fresh trainer per comparison). The cache's background
   shard reader (``activations.prefetch_tokens``) may work during the floor's turns, at most its 3
   shards ahead (one copy of each shard's rows), as it overlaps the SAE steps in a real run. (b) vs on the fly:
   ``python -m saes.train activations=cache`` and the same run on the fly, one after the other
   (``train_tokens_per_second`` of metrics.json; periodic evaluations off, the final one not counted).
3. A sweep of 8 SAEs (``sae.k`` 8, 16, 32, 64 x ``sae.aux_coef`` 1/32, 1/16) of ``--sweep-tokens``
   each: one process training all 8 per batch from the float32 cache vs 8 separate on-the-fly
   runs, of which the k=8 and k=64 runs are measured and the total taken as 4 x their sum
   (aux_coef does not change the cost). Wall = the whole command, Python start to exit.
4. Quality: held-out explained variance (``--eval-tokens`` held-out tokens, the same for every run)
   of the SAEs of 2.(b): on the fly, from the float32 cache and from the bfloat16 cache (same tokens,
   same seed; the batches differ: the cache visits its shards in a shuffled order).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars (the in-process training loop, the CLIs)

import saes  # noqa: F401, I001  (before torch: the same CPU thread settings as the CLIs)
import torch

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
SWEEP = ["sae.k=[8,16,32,64]", "sae.aux_coef=[0.03125,0.0625]"]
Timed = Callable[[], tuple[float, int]]
"""A measurement: returns (seconds, rows)."""


def run_cli(args: list[str]) -> tuple[float, str]:
    """Run ``python <args>`` in the repository; returns (wall seconds, output)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], check=False, cwd=REPO, capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"python {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def write_cache(folder: Path, tokens: int, dtype: str) -> dict[str, Any]:
    """``python -m saes.cache`` into ``folder``; returns its manifest."""
    run_cli(["-m", "saes.cache", f"tokens={tokens}", f"cache.dtype={dtype}", f"cache.path={folder}"])
    return json.loads((folder / "manifest.json").read_text())


def train(run_dir: Path, overrides: list[str]) -> tuple[float, list[dict[str, Any]]]:
    """``python -m saes.train`` into ``run_dir``; returns (wall seconds, metrics.json of every SAE)."""
    wall, _ = run_cli(["-m", "saes.train", "logger=none", "resume=false", *overrides, f"hydra.run.dir={run_dir}"])
    return wall, [json.loads(p.read_text()) for p in sorted(run_dir.glob("**/metrics.json"))]


def compose(name: str, overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from saes.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(name, overrides=overrides)


def forward_floor(tokens: int) -> tuple[Timed, Timed]:
    """Two measurements of the forward-only floor of ``python -m saes.cache tokens=<tokens>``: the
    first and the second half of its first ``tokens`` rows' worth of training contexts (the model
    is loaded once, here; the contexts are made lazily while timed, as the writer makes them)."""
    from saes.activations import ModelForwards
    from saes.data import load_corpus
    from saes.layers import site_hooks
    from saes.models import load_model

    cfg = compose("cache", [f"tokens={tokens}"])
    model = load_model(cfg.model.source, device=cfg.model.device, dtype=cfg.model.dtype)
    corpus = load_corpus(cfg.data, model.tokenizer, cfg.model.bos_token)
    source = ModelForwards(model, site_hooks(cfg.site, cfg.layer), corpus.special_ids() if cfg.data.exclude_special else None)
    per_batch = cfg.cache.batch_contexts
    batches = -(-tokens // (per_batch * cfg.data.context_size))  # about the cache's forwards
    source(torch.stack([c for _, c in islice(corpus.train_contexts(), per_batch)]))  # warm-up, not counted

    def half(first: int, count: int) -> Timed:
        def measure() -> tuple[float, int]:
            contexts = (c for _, c in corpus.train_contexts())
            for _ in islice(contexts, first * per_batch):  # skipped, not timed
                pass
            rows, start = 0, time.perf_counter()
            for _ in range(count):
                rows += next(iter(source(torch.stack(list(islice(contexts, per_batch)))).values())).shape[0]
            return time.perf_counter() - start, rows
        return measure

    return half(0, batches // 2), half(batches // 2, batches - batches // 2)


class StepFloor:
    """``SAETrainer.step`` alone on a cache's rows, pre-loaded and shuffled into in-memory batches:
    the default SAE's config and token budget; ``run(n)`` times its next ``n`` steps."""

    def __init__(self, cache: Path, overrides: list[str]):
        from saes.activations.cache.manifest import read_manifest
        from saes.activations.cache.reader import read_shard
        from saes.sae.registry import build
        from saes.training.plan import plan_members
        from saes.training.trainer import SAETrainer

        cfg = compose("train", overrides)
        (spec,) = plan_members(cfg)
        self.hook = spec.hook_in
        manifest = read_manifest(cache)
        rows = torch.cat([read_shard(cache, manifest, i, [self.hook])[self.hook] for i in range(len(manifest.shards))])
        rows = rows[torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(cfg.seed))][: cfg.tokens]
        self.batches = list(rows.split(cfg.training.batch_size))
        torch.manual_seed(cfg.seed)
        self.trainer = SAETrainer(build(spec.sae_options, d_in=rows.shape[1]), cfg.optimizer, cfg.training, cfg.tokens,
                                  spec.hooks_in, spec.hooks_out)
        sample = {self.hook: rows[: cfg.training.norm_estimate_tokens]}
        self.trainer.initialize_from_data(sample, torch.Generator().manual_seed(cfg.seed))
        self.seconds, self.rows, self.next = 0.0, 0, 0

    def run(self, n: int) -> float:
        """Step the next ``n`` batches (fewer at the end); returns the seconds taken."""
        part = self.batches[self.next : self.next + n]
        start = time.perf_counter()
        for batch in part:
            self.trainer.step({self.hook: batch})
        seconds = time.perf_counter() - start
        self.next += len(part)
        self.seconds, self.rows = self.seconds + seconds, self.rows + sum(b.shape[0] for b in part)
        return seconds


def interleaved_cache_run(cache: Path, overrides: list[str], floor: StepFloor, every: int, run_dir: Path) -> tuple[float, int]:
    """Train from ``cache`` in this process through ``saes.training``'s own parts (``wire_run``, then
    ``train_loop``: the stream, the loop, logging) with ``every`` steps of ``floor`` run before every
    ``every``-th batch, their time taken out; returns (seconds, tokens) of the run, counted like
    ``train_tokens_per_second`` (from the first buffer fill to the end of the loop)."""
    from saes.training.loop import train_loop
    from saes.training.wiring import validate_config, wire_run

    cfg = compose("train", [*overrides, "activations=cache", f"activations.path={cache}"])
    run = wire_run(cfg, run_dir, validate_config(cfg), None)
    real_next, taken, count = run.stream.next_batch, [0.0], [0]

    def next_batch() -> Any:
        if count[0] % every == 0:
            taken[0] += floor.run(every)
        count[0] += 1
        return real_next()

    run.stream.next_batch = next_batch  # type: ignore[method-assign]
    try:
        assert train_loop(run) == "finished"
        seconds = time.perf_counter() - run.started_at - taken[0]
    finally:
        run.stream.close()
    floor.run(len(floor.batches))  # the floor's steps left over, if any
    floor.batches.clear()
    return seconds, run.members[0].trainer.tokens


def combine(*measured: tuple[float, int]) -> float:
    """Rows per second over several measurements."""
    return sum(r for _, r in measured) / sum(s for s, _ in measured)


def table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=lambda s: int(float(s)), default=200_000, help="cache rows = training tokens of 2. and 4.")
    parser.add_argument("--sweep-tokens", type=lambda s: int(float(s)), default=None, help="tokens per SAE of the sweep (default tokens/4)")
    parser.add_argument("--every", type=int, default=4, help="2a.: steps of the floor and of the loop per turn")
    parser.add_argument("--eval-tokens", type=int, default=16_384, help="held-out tokens of the final evaluation (quality)")
    args = parser.parse_args()
    tokens, sweep_tokens = args.tokens, args.sweep_tokens or args.tokens // 4
    load = lambda: " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
          f"load average before: {load()}", flush=True)
    began = time.perf_counter()
    quiet = ["training.ce_tokens=0", "training.periodic_ce_tokens=0", "training.eval_every=0"]
    common = [f"training.eval_tokens={args.eval_tokens}", *quiet]

    with tempfile.TemporaryDirectory(prefix="saes-bench-cache-") as tmp:
        work = Path(tmp)
        fp32, bf16 = work / "cache-fp32", work / "cache-bf16"

        # 1. write vs forward-only floor: floor half, write fp32, write bf16, floor half
        floor_a, floor_b = forward_floor(tokens)
        fwd = [floor_a()]
        manifests = {"float32": write_cache(fp32, tokens, "float32"), "bfloat16": write_cache(bf16, tokens, "bfloat16")}
        fwd.append(floor_b())
        print(f"1. written ({time.perf_counter() - began:.0f} s); load average {load()}", flush=True)

        # 2. + 4. training from the CLI: cache fp32, on the fly, cache bf16 (metrics.json)
        train_args = [f"tokens={tokens}", *common]
        cached = train(work / "run-cache-fp32", [*train_args, "activations=cache", f"activations.path={fp32}"])[1][0]
        onfly = train(work / "run-onthefly", train_args)[1][0]
        cached16 = train(work / "run-cache-bf16", [*train_args, "activations=cache", f"activations.path={bf16}"])[1][0]
        # 2a. the real loop from each cache in this process, its batches alternating with the floor's steps
        inproc = [f"tokens={tokens}", "logger=none", "training.eval_tokens=2048", *quiet]
        floors: dict[str, StepFloor] = {}
        loops: dict[str, tuple[float, int]] = {}
        for dtype, folder in (("float32", fp32), ("bfloat16", bf16)):
            floors[dtype] = StepFloor(fp32, inproc)
            loops[dtype] = interleaved_cache_run(folder, inproc, floors[dtype], args.every, work / f"loop-{dtype}")
        print(f"2. trained ({time.perf_counter() - began:.0f} s); load average {load()}", flush=True)

        # 3. sweep of 8 SAEs: one process from the cache vs on-the-fly runs k=8 and k=64 (x4)
        sweep_args = [f"tokens={sweep_tokens}", "training.eval_tokens=4096", *quiet]
        fly8 = train(work / "sweep-k8", [*sweep_args, "sae.k=8"])
        sweep = train(work / "sweep-cache", [*sweep_args, *SWEEP, "activations=cache", f"activations.path={fp32}"])
        fly64 = train(work / "sweep-k64", [*sweep_args, "sae.k=64"])
        print(f"3. swept ({time.perf_counter() - began:.0f} s); load average {load()}\n", flush=True)

    total = time.perf_counter() - began
    print(f"{tokens:,} tokens (cache rows and training budget), default run (SmolLM2-135M L3 resid_post, TopK k 32, "
          f"4,608 latents, batch 1,024); whole benchmark {total / 60:.1f} min; load average after: {load()}\n")

    floor_tps = combine(*fwd)
    write_rows: list[list[str]] = [["forward-only floor (ModelForwards, stop after block 3, rows discarded; half before, half after)",
                                    f"{floor_tps:,.0f}", f"{sum(s for s, _ in fwd):.1f}", f"{sum(r for _, r in fwd):,}", ""]]
    write_tps: dict[str, float] = {}
    for dtype, manifest in manifests.items():
        seconds = manifest["extra"]["last_write_seconds"]
        write_tps[dtype] = manifest["rows"] / seconds
        write_rows.append([f"python -m saes.cache cache.dtype={dtype}", f"{write_tps[dtype]:,.0f}", f"{seconds:.1f}", f"{manifest['rows']:,}",
                           f"{manifest['extra']['bytes'] / 1e6:,.0f} MB, {len(manifest['shards'])} shards"])
    overhead = {d: floor_tps / tps - 1 for d, tps in write_tps.items()}
    write_rows.append(["write overhead vs floor (target < 15%)", f"float32 {overhead['float32']:+.0%}, bfloat16 {overhead['bfloat16']:+.0%}", "", "", ""])
    table(["cache write", "rows/s", "seconds", "rows", "on disk"], write_rows)

    cache_tps, fly_tps, cache16_tps = (m["train_tokens_per_second"] for m in (cached, onfly, cached16))
    train_rows = [[name, f"{m['train_tokens_per_second']:,.0f}", f"{m['train_seconds']:.1f}", str(m["model_forwards"]),
                   f"{m['train_tokens_per_second'] / fly_tps:.2f}x"]
                  for name, m in (("on the fly (python -m saes.train)", onfly), ("from the float32 cache (activations=cache)", cached),
                                  ("from the bfloat16 cache", cached16))]
    train_rows.append([f"cache / on the fly (target >= 2.5x): float32 {cache_tps / fly_tps:.2f}x, bfloat16 {cache16_tps / fly_tps:.2f}x",
                       "", "", "", ""])
    table(["training, python -m saes.train (train_tokens_per_second of metrics.json)", "tokens/s", "train s", "model forwards",
           "vs on the fly"], train_rows)

    floor_rows, ratios = [], []
    for dtype in ("float32", "bfloat16"):
        (seconds, rows), floor = loops[dtype], floors[dtype]
        step_tps = floor.rows / floor.seconds
        ratios.append(f"{dtype} {rows / seconds / step_tps:.0%}")
        floor_rows += [[f"the training loop from the {dtype} cache (wire_run + train_loop)", f"{rows / seconds:,.0f}", f"{seconds:.1f}",
                        f"{rows / seconds / step_tps:.0%}"],
                       [f"SAETrainer.step alone on in-memory batches (floor), alternating with it every {args.every} steps",
                        f"{step_tps:,.0f}", f"{floor.seconds:.1f}", "100%"]]
    floor_rows.append([f"cache / floor (target >= 90%): {', '.join(ratios)}", "", "", ""])
    table(["training vs its floor, in this process", "tokens/s", "seconds", "vs floor"], floor_rows)

    fly_wall = 4 * (fly8[0] + fly64[0])
    fly_train = 4 * (fly8[1][0]["train_seconds"] + fly64[1][0]["train_seconds"])
    sweep_wall, sweep_metrics = sweep
    sweep_train = sweep_metrics[0]["train_seconds"]
    write_s = sweep_tokens / write_tps["float32"]
    sae_tokens = 8 * sweep_tokens
    sweep_rows = [
        [f"one process, 8 SAEs per batch from one cache ({len(sweep_metrics)} metrics.json)", f"{sweep_wall:.1f}", f"{sweep_train:.1f}",
         f"{sae_tokens / sweep_train:,.0f}", str(sweep_metrics[0]["model_forwards"])],
        [f"the same + writing a {sweep_tokens:,}-row cache (at the write rate of 1.)", f"{sweep_wall + write_s:.1f}", "", "", ""],
        ["8 on-the-fly runs (4 x (k=8 run + k=64 run), both measured)", f"{fly_wall:.1f}", f"{fly_train:.1f}",
         f"{sae_tokens / fly_train:,.0f}", str(4 * (fly8[1][0]["model_forwards"] + fly64[1][0]["model_forwards"]))],
        [(f"speed-up: wall {fly_wall / sweep_wall:.1f}x ({fly_wall / (sweep_wall + write_s):.1f}x with the write), "
          f"training {fly_train / sweep_train:.1f}x"), "", "", "", ""],
    ]
    table([f"sweep: 8 SAEs (sae.k 8,16,32,64 x sae.aux_coef 1/32,1/16), {sweep_tokens:,} tokens each", "wall s", "train s",
           "SAE tokens/s", "model forwards"], sweep_rows)

    ev = onfly["explained_variance"]
    quality_rows = [[name, f"{m['explained_variance']:.4f}", f"{m['explained_variance'] - ev:+.4f}", f"{m['mse']:.4f}",
                     f"{m['l0']:.1f}", f"{m['dead_fraction']:.2%}"]
                    for name, m in (("on the fly", onfly), ("from the float32 cache", cached), ("from the bfloat16 cache", cached16))]
    table([f"quality: default SAE, {tokens:,} tokens, seed 0, {onfly['eval_tokens']:,} held-out tokens", "explained variance",
           "vs on the fly (target within 0.002 at fp32)", "mse", "L0", "dead"], quality_rows)


if __name__ == "__main__":
    main()
