"""Quality of every SAE variant at a matched L0, in one run: prints a Markdown table.

    .venv/bin/python benchmarks/quality.py                      # all variants, default run config
    .venv/bin/python benchmarks/quality.py --tokens 100000 --variants topk relu
    .venv/bin/python benchmarks/quality.py --variants topk jumprelu:sae.l0_coef=0.5,sae.bandwidth=0.1

Each variant is trained exactly as ``python -m saes.train sae=<name>`` would (same config
composition, seed, shuffle buffer, normalization estimate, trainer and evaluation), but the model
forward runs once: training and held-out activations are computed first and every variant reads
the same rows in the same order. Columns: explained variance and L0 and dead fraction on the
held-out tokens (``training.eval_tokens``), delta LM loss with the SAE spliced in
(``training.ce_tokens``), and the SAE step throughput. The sparsity coefficients of the
penalty-trained variants (relu, gated, jumprelu) in ``conf/sae/*.yaml`` were chosen to land near
L0 = 32 on the default run; the L0 column says where each one landed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = ["relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka_batchtopk"]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from saes.config import register_configs

    from omegaconf import open_dict

    from saes.training.plan import plan_members

    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides)
    specs = plan_members(cfg)  # the site's {layer} templates, resolved as saes.train does
    if len({(s.hook_in, s.hook_out) for s in specs}) != 1:
        raise SystemExit("benchmarks/quality.py compares variants on one hook: give a single layer and site")
    with open_dict(cfg):
        cfg.site.hook_in, cfg.site.hook_out = specs[0].hook_in, specs[0].hook_out
    return cfg


def concat(batches) -> dict[str, torch.Tensor]:
    batches = list(batches)
    return {name: torch.cat([b[name] for b in batches]) for name in batches[0]}


def cache_activations(cfg):
    """``(model, train rows per hook, held-out rows per hook, ce contexts, keep_fn, seconds)``."""
    from saes.activations import ModelForwards
    from saes.data import load_corpus
    from saes.models import load_model

    start = time.perf_counter()
    hook_in, hook_out = cfg.site.hook_in, cfg.site.hook_out or cfg.site.hook_in
    model = load_model(cfg.model.source, device=cfg.model.device, dtype=cfg.model.dtype)
    corpus = load_corpus(cfg.data, model.tokenizer, cfg.model.bos_token)
    excluded = corpus.special_ids() if cfg.data.exclude_special else None
    source = ModelForwards(model, [hook_in, hook_out], excluded, device="cpu")
    heldout = corpus.heldout_contexts(cfg.training.eval_tokens)
    held = concat(source.stream(iter(heldout), cfg.activations.batch_contexts))
    parts, rows = [], 0
    for batch in source.stream((c for _, c in corpus.train_contexts()), cfg.activations.batch_contexts):
        parts.append(batch)
        rows += next(iter(batch.values())).shape[0]
        if rows >= cfg.tokens:
            break
    ce_contexts = heldout[: max(1, cfg.training.ce_tokens // cfg.data.context_size)]
    return model, parts, held, ce_contexts, source.keep_mask, time.perf_counter() - start


def train_variant(cfg, parts, held, model, ce_contexts, keep_fn) -> dict:
    """Train and evaluate one variant like ``saes.training.run.run_training`` does."""
    from omegaconf import OmegaConf

    from saes.activations import ShuffleBuffer
    from saes.evaluate.metrics import reconstruction_metrics
    from saes.evaluate.lm import lm_metrics
    from saes.sae.registry import build
    from saes.training.trainer import SAETrainer

    hook_in, hook_out = cfg.site.hook_in, cfg.site.hook_out or cfg.site.hook_in
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    batches = ShuffleBuffer(min(cfg.activations.buffer_tokens, cfg.tokens), cfg.training.batch_size, generator).batches(iter(parts))
    first = list(itertools.islice(batches, max(1, cfg.training.norm_estimate_tokens // cfg.training.batch_size)))
    sample = concat(first)
    d_out = held[hook_out].shape[1] if hook_out != hook_in else None
    sae = build(OmegaConf.to_container(cfg.sae, resolve=True), d_in=held[hook_in].shape[1], d_out=d_out)
    trainer = SAETrainer(sae, cfg.optimizer, cfg.training, cfg.tokens, (hook_in,), (hook_out,))
    trainer.initialize_from_data(sample, generator)
    start = time.perf_counter()
    for batch in itertools.chain(first, batches):
        if trainer.tokens >= cfg.tokens:
            break
        trainer.step(batch)
    seconds = time.perf_counter() - start
    folded = trainer.folded_copy().eval()
    recon = reconstruction_metrics(folded, held[hook_in], held[hook_out])
    recon.pop("firing_counts")
    lm = lm_metrics(model, folded, hook_in, hook_out, ce_contexts, keep_fn) if cfg.training.ce_tokens > 0 else {}
    return {**recon, **lm, "train_tokens": trainer.tokens, "sae_seconds": seconds, "sae_tokens_per_second": trainer.tokens / seconds}


def table(results: dict[str, dict]) -> str:
    lines = ["| variant | explained variance | L0 | dead % | delta LM loss | SAE steps tok/s |",
             "|---|---|---|---|---|---|"]
    for name, m in results.items():
        lines.append(f"| {name} | {m['explained_variance']:.3f} | {m['l0']:.1f} | {100 * m['dead_fraction']:.1f} | "
                     f"{m.get('delta_lm_loss', float('nan')):.3f} | {m['sae_tokens_per_second']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, metavar="NAME[:KEY=VALUE,...]",
                        help="conf/sae/<name> configs to train, each with optional Hydra overrides")
    parser.add_argument("--tokens", type=int, default=None, help="training tokens per variant (default: the run default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics here")
    parser.add_argument("--activations-cache", type=Path, default=None,
                        help="reuse the activations saved in this file (written on the first use)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every variant (e.g. layer=5)")
    args = parser.parse_args()

    common = ["logger=none", *args.overrides] + ([f"tokens={args.tokens}"] if args.tokens else [])
    base = compose(common)
    if args.activations_cache and args.activations_cache.exists():
        from saes.activations import ModelForwards
        from saes.data import load_corpus
        from saes.models import load_model

        parts, held, ce_contexts = torch.load(args.activations_cache)
        model = load_model(base.model.source, device=base.model.device, dtype=base.model.dtype)
        corpus = load_corpus(base.data, model.tokenizer, base.model.bos_token)
        keep_fn = ModelForwards(model, [base.site.hook_in], corpus.special_ids() if base.data.exclude_special else None).keep_mask
        cache_seconds = 0.0
    else:
        model, parts, held, ce_contexts, keep_fn, cache_seconds = cache_activations(base)
        if args.activations_cache:
            torch.save((parts, held, ce_contexts), args.activations_cache)
    print(f"cached {sum(next(iter(p.values())).shape[0] for p in parts):,} training and "
          f"{next(iter(held.values())).shape[0]:,} held-out activation rows in {cache_seconds:.0f} s", flush=True)
    results: dict[str, dict] = {}
    for spec in args.variants:
        name, _, rest = spec.partition(":")
        extra = [o for o in rest.split(",") if o]
        cfg = compose([*common, f"sae={name}", *extra])
        label = name + (f" ({', '.join(extra)})" if extra else "")
        results[label] = train_variant(cfg, parts, held, model, ce_contexts, keep_fn)
        m = results[label]
        print(f"{label}: ev={m['explained_variance']:.4f} l0={m['l0']:.1f} dead={m['dead_fraction']:.3f} "
              f"dlm={m.get('delta_lm_loss', float('nan')):.4f} ({m['sae_seconds']:.0f} s)", flush=True)
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
