"""End-to-end training throughput of the default run vs the model forward alone (its floor).

    .venv/bin/python benchmarks/pipeline.py [--tokens 300000] [--overrides "training.autocast=bfloat16"]

1. ``python -m saes.train tokens=<tokens> logger=none`` (the default run: SmolLM2-135M layer 3
   resid_post, TopK k 32, 4,608 latents, 32 contexts x 128 tokens per forward, batch 1,024) in a
   subprocess; its ``train_tokens_per_second`` (metrics.json) counts every training forward, the
   shuffle buffer and every SAE step (not model loading nor the final evaluation, which is shrunk
   here to save time: training.eval_tokens / ce_tokens do not touch training).
   It runs twice: as configured (the model forwards prefetched in a background thread,
   ``activations.prefetch_tokens``, default half the buffer) and with ``activations.prefetch_tokens=0``
   (forwards and SAE steps take turns).
2. In this process: the same model, corpus, hook and ``ModelForwards`` (the forward stops after
   block 3) run over the same training contexts, 32 per forward, until as many activation rows were
   made: the floor of on-the-fly training (every SAE step hidden). Measured just before and just
   after the training run, and averaged.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHRUNK_EVAL = ["training.eval_tokens=2048", "training.ce_tokens=0", "training.periodic_ce_tokens=0"]


def train_run(tokens: int, overrides: list[str], workdir: Path) -> dict:
    run_dir = workdir / "run"
    cmd = [sys.executable, "-m", "saes.train", f"tokens={tokens}", "logger=none", "resume=false",
           *SHRUNK_EVAL, *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(sorted(run_dir.glob("**/metrics.json"))[0].read_text())


def forward_floor(tokens: int, overrides: list[str]):
    """A function measuring ``(seconds, rows, forwards)`` of the training forwards alone (the model
    is loaded once, here)."""
    sys.path.insert(0, str(REPO))
    import saes  # noqa: F401  (before torch: the same CPU thread settings as saes.train)
    import torch
    from hydra import compose, initialize_config_dir

    from saes.activations import ModelForwards
    from saes.config import register_configs
    from saes.data import load_corpus
    from saes.models import load_model, resolve_device
    from saes.training.plan import plan_members

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"tokens={tokens}", "logger=none", *overrides])
    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model.source, device=cfg.model.device, dtype=cfg.model.dtype)
    corpus = load_corpus(cfg.data, model.tokenizer, cfg.model.bos_token)
    specs = plan_members(cfg)
    hooks = list(dict.fromkeys(h for s in specs for h in (s.hook_in, s.hook_out)))
    source = ModelForwards(model, hooks, corpus.special_ids() if cfg.data.exclude_special else None,
                              device=resolve_device(cfg.device))
    contexts = (c for _, c in corpus.train_contexts())
    source(torch.stack([next(contexts) for _ in range(2)]))  # warm-up, not counted

    def measure() -> tuple[float, int, int]:
        contexts = (c for _, c in corpus.train_contexts())
        rows = forwards = 0
        start = time.perf_counter()
        while rows < tokens:
            acts = source(torch.stack([next(contexts) for _ in range(cfg.activations.batch_contexts)]))
            rows += next(iter(acts.values())).shape[0]
            forwards += 1
        return time.perf_counter() - start, rows, forwards

    return measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=300_000, help="training tokens (the default run's budget)")
    parser.add_argument("--overrides", default="", help="extra Hydra overrides for both measurements (space-separated)")
    args = parser.parse_args()
    overrides = args.overrides.split()
    load = lambda: " ".join(f"{v:.2f}" for v in os.getloadavg())  # noqa: E731
    print(f"load average before: {load()}")
    measure_floor = forward_floor(args.tokens, overrides)
    before = measure_floor()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = train_run(args.tokens, overrides, Path(tmp) / "prefetch")
        turns = train_run(args.tokens, [*overrides, "activations.prefetch_tokens=0"], Path(tmp) / "turns")
    after = measure_floor()  # the floor before and after the run, averaged (the machine's load drifts)
    seconds, rows, forwards = (before[0] + after[0]) / 2, before[1], before[2]
    train_tps, floor_tps = metrics["train_tokens_per_second"], rows / seconds
    import torch

    print(f"\n{args.tokens:,} training tokens, default run{' + ' + args.overrides if overrides else ''}; "
          f"CPU threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
          f"load average after: {load()}\n")
    print("| measurement | tokens/s | seconds | model forwards |")
    print("|---|---|---|---|")
    print(f"| end-to-end training (saes.train) | {train_tps:,.0f} | {metrics['train_seconds']:.1f} | {metrics['model_forwards']} |")
    turns_tps = turns["train_tokens_per_second"]
    print(f"| the same with activations.prefetch_tokens=0 | {turns_tps:,.0f} | {turns['train_seconds']:.1f} | {turns['model_forwards']} |")
    print(f"| model forward to the hooked layer only (floor) | {floor_tps:,.0f} | {seconds:.1f} | {forwards} |")
    print(f"| training / floor | {train_tps / floor_tps:.0%} (prefetch 0: {turns_tps / floor_tps:.0%}) | | |")


if __name__ == "__main__":
    main()
