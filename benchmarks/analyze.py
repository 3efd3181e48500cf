"""Feature analysis cost per SAE width: throughput vs its floor, memory, database write.

    .venv/bin/python benchmarks/analyze.py                               # random TopK SAEs of 8,192 and 16,384 latents
    .venv/bin/python benchmarks/analyze.py --d-sae 16384 --tokens 16384 32768   # memory vs token budget
    .venv/bin/python benchmarks/analyze.py --sae outputs/train/smollm2-135m_topk/default

Each SAE (a random TopK SAE, k=32, of each ``--d-sae`` width, on ``blocks.3.hook_resid_post`` of
SmolLM2-135M, or a trained one given by ``--sae``) x each ``--tokens`` budget runs in its own
process, so its peak RSS is its own. There: the floor (model forward + SAE encode over the same
token batches, no analysis) runs once, then the real ``saes.analysis.run.run_analysis`` with the
model already loaded, publishing into a local MongoDB-wire-protocol server started for the
benchmark in a temporary folder (or ``$MONGO_URI``). Timings are single runs on CPU: on a shared
machine, compare them with care.

Columns: tokens/s of the floor and of the analysis streaming pass; the once-per-analysis costs
(logit effects + neighbours; feature documents; the database write alone: ``publish_analysis``
minus the time spent building the documents it consumes); the documents counted in the database
afterwards; the accumulator's state (F x (top_n + reservoir) examples, independent of the token
count) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HOOK = "blocks.3.hook_resid_post"
MODEL = {"name": "smollm2-135m", "source": "embedded:smollm2-135m-instruct", "n_layers": 30, "d_model": 576,
         "bos_token": "<|endoftext|>", "device": "cpu", "dtype": "float32"}  # fmt: skip
DATA = {"source": "pydocs", "path": None, "subset": None, "split": "train", "text_column": "text", "context_size": 128,
        "holdout_tokens": 50000, "shuffle_seed": 0, "exclude_special": True}  # fmt: skip


def random_sae(d_sae: int, folder: Path) -> Path:
    """A random TopK SAE (k=32, unit decoder rows, tied encoder, small random encoder bias so
    features of many densities fire) saved as a saes run folder with training-like metadata."""
    import torch

    from saes.sae.formats import save_sae
    from saes.sae.registry import build

    sae = build({"architecture": "topk", "d_sae": d_sae, "k": 32}, d_in=MODEL["d_model"])
    gen = torch.Generator().manual_seed(0)
    sae.initialize(gen)
    with torch.no_grad():
        sae.b_enc_F.copy_(torch.randn(d_sae, generator=gen) * 0.2)
    meta = {"model_name": MODEL["source"], "hook_name": HOOK, "hook_name_out": HOOK, "context_size": 128,
            "exclude_special_tokens": True, "dataset_path": "pydocs", "status": "finished",
            "config": {"layer": 3, "model": MODEL, "data": DATA}}  # fmt: skip
    save_sae(sae, folder / "sae", meta)
    return folder


def measure(sae_path: Path, tokens: int, uri: str) -> dict[str, Any]:
    """One SAE x token budget, in this process: floor, then the real analysis."""
    import torch
    from hydra import compose, initialize_config_dir

    import saes.analysis.run as run_module
    from saes.activations import ModelForwards
    from saes.analysis.accumulate import FeatureAccumulator
    from saes.analysis.config import AnalysisConfig, register_analyze_configs
    from saes.analysis.stream import analyze_stream, batches
    from saes.analysis.target import resolve_target
    from saes.data import iter_documents, iter_token_stream, load_corpus, pack_contexts
    from saes.models import load_model
    from saes.sae.formats import load_sae
    from saes.store import connect, list_analyses

    register_analyze_configs()
    db_name = f"bench_analyze_{uuid.uuid4().hex[:8]}"
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=[f"sae_path={sae_path}", "device=cpu", f"analysis.tokens={tokens}",
                                            f"mongo_uri='{uri}'", f"mongo_db={db_name}"])  # fmt: skip
    target = resolve_target(cfg, {})
    model = load_model(target.model.source, device="cpu", dtype="float32")
    sae = load_sae(target.sae_dir).eval()

    # The floor: the same token batches as the analysis, through model + SAE encode only.
    corpus = load_corpus(target.data, model.tokenizer, target.model.bos_token)
    ctx = int(target.data.context_size)
    contexts = pack_contexts(iter_token_stream(iter_documents(target.data), model.tokenizer, corpus.bos_id), ctx, corpus.bos_id)
    token_batches = list(batches(contexts, int(cfg.analysis.batch_contexts), max(1, tokens // ctx)))
    source = ModelForwards(model, [target.hook_in], excluded_ids=None)

    def keep(tokens_BT: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(tokens_BT, dtype=torch.bool)

    analyze_stream(source, sae, None, token_batches[:1], keep, progress=False)  # warm-up
    floor = analyze_stream(source, sae, None, token_batches, keep, progress=False)
    del token_batches, source

    # The analysis, timing the document building apart from the database write.
    spent = {"documents": 0.0, "publish": 0.0}
    real_docs, real_publish = run_module.feature_documents, run_module.publish_analysis

    def timed_docs(*args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        gen = real_docs(*args, **kwargs)
        while True:
            t0 = time.perf_counter()
            try:
                doc = next(gen)
            except StopIteration:
                spent["documents"] += time.perf_counter() - t0
                return
            spent["documents"] += time.perf_counter() - t0
            yield doc

    def timed_publish(*args: Any, **kwargs: Any) -> str:
        t0 = time.perf_counter()
        try:
            return real_publish(*args, **kwargs)
        finally:
            spent["publish"] += time.perf_counter() - t0

    run_module.feature_documents, run_module.publish_analysis = timed_docs, timed_publish
    summary = run_module.run_analysis(cfg, {}, progress=False, model=model)
    db = connect(uri, db_name)
    written = db.features.count_documents({"dictionary_id": summary["dictionary_id"], "analysis_id": summary["analysis_id"]})
    timing = list_analyses(db, summary["dictionary_id"])[0]["meta"]["timing"]
    db.client.drop_database(db_name)
    settings: AnalysisConfig = AnalysisConfig(**cfg.analysis)
    return {
        "sae": str(sae_path),
        "latents": sae.d_sae,
        "tokens": floor.positions,
        "floor_tps": floor.tokens_per_second,
        "analysis_tps": summary["tokens_per_second"],
        "stages": {k: timing[f"{k}_seconds"] for k in ("forward", "encode", "accumulate")},
        "effects_s": timing["effects_seconds"],
        "documents_s": spent["documents"],
        "db_write_s": spent["publish"] - spent["documents"],
        "written": written,
        "state_mib": FeatureAccumulator(1, settings).nbytes() * sae.d_sae / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": summary["wall_seconds"],
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-sae", type=int, nargs="*", default=[8192, 16384], help="random TopK SAE widths")
    parser.add_argument("--sae", type=Path, nargs="*", default=[], help="trained SAEs (run folders) to add")
    parser.add_argument("--tokens", type=int, nargs="+", default=[16384], help="analysis token budgets")
    parser.add_argument("--child", nargs=3, metavar=("SAE", "TOKENS", "URI"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child[0]), int(args.child[1]), args.child[2])))
        return

    from saes.store import ensure_server, stop_server

    with tempfile.TemporaryDirectory(prefix="bench_analyze_") as tmp:
        saes = [random_sae(d, Path(tmp) / f"random_{d}") for d in args.d_sae] + [p.resolve() for p in args.sae]
        server_dir = Path(tmp) / "mongo"
        uri = ensure_server(server_dir)  # $MONGO_URI when set, else a local server in tmp
        rows = []
        try:
            for sae in saes:
                for tokens in args.tokens:
                    t0 = time.perf_counter()
                    out = subprocess.run([sys.executable, __file__, "--child", str(sae), str(tokens), uri],
                                         capture_output=True, text=True, check=False)  # fmt: skip
                    if out.returncode != 0:
                        sys.exit(f"benchmark of {sae} failed:\n{out.stderr[-3000:]}")
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    row["process_s"] = time.perf_counter() - t0
                    rows.append(row)
                    print(f"done: {row['latents']:,} latents, {row['tokens']:,} tokens in {row['process_s']:.0f} s",
                          file=sys.stderr, flush=True)  # fmt: skip
        finally:
            stop_server(server_dir)

    print(f"SmolLM2-135M {HOOK} on CPU ({rows[0]['threads']} threads), pydocs contexts of 128 tokens; "
          "default analysis settings (top_n=20, reservoir=100, window 16+1+8); one run each\n")
    print("| SAE | latents | tokens | floor tok/s | analysis tok/s | vs floor | effects s | documents s "
          "| DB write s | features written | state MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = "random TopK k=32" if Path(r["sae"]).name.startswith("random_") else Path(r["sae"]).name
        print(f"| {name} | {r['latents']:,} | {r['tokens']:,} | {r['floor_tps']:,.0f} | {r['analysis_tps']:,.0f} "
              f"| {r['floor_tps'] / r['analysis_tps']:.2f}x | {r['effects_s']:.1f} | {r['documents_s']:.1f} "
              f"| {r['db_write_s']:.1f} | {r['written']:,} | {r['state_mib']:.0f} | {r['peak_rss_mib']:,.0f} |")
    print("\nanalysis pass by stage (s): " + "; ".join(
        f"{r['latents']:,}/{r['tokens']:,}: forward {r['stages']['forward']:.1f}, encode {r['stages']['encode']:.1f}, "
        f"accumulate {r['stages']['accumulate']:.1f}" for r in rows))  # fmt: skip


if __name__ == "__main__":
    main()
