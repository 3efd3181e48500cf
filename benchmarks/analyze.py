"""Feature analysis throughput vs its floor (the model forward + SAE encode alone) on the same tokens.

    .venv/bin/python benchmarks/analyze.py [--sae outputs/train/smollm2-135m_topk/default] [--tokens 65536]
    .venv/bin/python benchmarks/analyze.py --d-sae 16384        # a random 16,384-latent TopK SAE

The token batches are made once; then the floor (forward to the hook + ``sae.encode``) and the
analysis streaming pass (the same + the per-feature accumulator) run alternately ``--repeats``
times over them, and the median of each is reported (the machine may be shared). The fixed costs
after the pass (logit effects, neighbours, documents, the database write to a temporary local
server) are timed once. Peak memory is the process's max RSS.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from saes.activations import ActivationSource  # noqa: E402
from saes.analysis.accumulate import FeatureAccumulator  # noqa: E402
from saes.analysis.config import AnalysisConfig  # noqa: E402
from saes.analysis.documents import WeightEffects, feature_documents  # noqa: E402
from saes.analysis.effects import logit_effects, nearest_neighbours  # noqa: E402
from saes.analysis.stream import analyze_stream, batches  # noqa: E402
from saes.analysis.tokens import TokenStrings  # noqa: E402
from saes.data import iter_documents, iter_token_stream, load_corpus, pack_contexts  # noqa: E402
from saes.models import load_model  # noqa: E402
from saes.sae.formats import load_metadata, load_sae  # noqa: E402
from saes.sae.registry import build  # noqa: E402

DEFAULT_SAE = REPO / "outputs/train/smollm2-135m_topk/default"
PYDOCS = {"source": "pydocs", "path": None, "subset": None, "split": "train", "text_column": "text",
          "context_size": 128, "holdout_tokens": 50000, "shuffle_seed": 0, "exclude_special": True}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sae", type=Path, default=DEFAULT_SAE, help="trained SAE (run folder or sae/)")
    parser.add_argument("--d-sae", type=int, default=0, help="use a random TopK SAE (k=32) of this width instead")
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-db", action="store_true", help="skip the database write")
    args = parser.parse_args()

    settings = AnalysisConfig(tokens=args.tokens)
    if args.d_sae:
        sae = build({"architecture": "topk", "d_sae": args.d_sae, "k": 32}, d_in=576)
        sae.initialize(torch.Generator().manual_seed(0))
        hook, data, label = "blocks.3.hook_resid_post", OmegaConf.create(PYDOCS), f"random TopK, {args.d_sae:,} latents"
    else:
        folder = args.sae / "sae" if (args.sae / "sae").is_dir() else args.sae
        sae, meta = load_sae(folder), load_metadata(folder)
        hook, data, label = meta["hook_name"], OmegaConf.create(meta["config"]["data"]), f"{folder}, {sae.d_sae:,} latents"
    sae.eval()
    model = load_model("embedded:smollm2-135m-instruct", device="cpu", dtype="float32")
    corpus = load_corpus(data, model.tokenizer, "<|endoftext|>")
    excluded = corpus.special_ids()
    ctx = int(data.context_size)
    contexts = pack_contexts(iter_token_stream(iter_documents(data), model.tokenizer, corpus.bos_id), ctx, corpus.bos_id)
    token_batches = list(batches(contexts, settings.batch_contexts, settings.tokens // ctx))
    positions = sum(b.numel() for b in token_batches)
    source = ActivationSource(model, [hook], excluded_ids=None)

    def keep(tokens: torch.Tensor) -> torch.Tensor:
        return ~torch.isin(tokens, excluded)

    analyze_stream(source, sae, None, token_batches[:1], keep, progress=False)  # warm-up
    floor, full, accs = [], [], []
    for _ in range(args.repeats):
        floor.append(analyze_stream(source, sae, None, token_batches, keep, progress=False))
        accs.append(FeatureAccumulator(sae.d_sae, settings))
        full.append(analyze_stream(source, sae, accs[-1], token_batches, keep, progress=False))
    acc = accs[-1]

    t0 = time.perf_counter()
    effects = WeightEffects(logit_effects(sae.W_dec_FD.detach(), model, settings.logit_effects),
                            nearest_neighbours(sae.W_dec_FD.detach(), settings.neighbours))  # fmt: skip
    t_effects = time.perf_counter() - t0
    t0 = time.perf_counter()
    docs = list(feature_documents(acc, settings, TokenStrings(model.tokenizer), effects))
    t_docs = time.perf_counter() - t0
    t_db = float("nan")
    if not args.no_db:
        from saes.store import connect, ensure_server, publish_analysis, stop_server

        with tempfile.TemporaryDirectory() as tmp:
            db = connect(ensure_server(tmp), "bench_analyze")  # $MONGO_URI if set, else a temporary local server
            t0 = time.perf_counter()
            publish_analysis(db, "bench", iter(docs), expected_count=sae.d_sae)
            t_db = time.perf_counter() - t0
            db.client.drop_database("bench_analyze")
            stop_server(tmp)

    def med(runs: list, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs)

    s_floor, s_full = med(floor, "seconds"), med(full, "seconds")
    print(f"SmolLM2-135M {hook}; {label}; {positions:,} tokens ({len(token_batches)} forwards of "
          f"{settings.batch_contexts}x{ctx}); CPU threads {torch.get_num_threads()}; median of {args.repeats}\n")
    print("| pass | seconds | tokens/s | vs floor |")
    print("|---|---|---|---|")
    print(f"| floor: model forward + SAE encode | {s_floor:.1f} | {positions / s_floor:,.0f} | 1.00x |")
    print(f"| analysis streaming pass | {s_full:.1f} | {positions / s_full:,.0f} | {s_full / s_floor:.2f}x |")
    print(f"\nanalysis pass: forward {med(full, 'forward'):.1f} s, encode {med(full, 'encode'):.1f} s, "
          f"accumulate {med(full, 'accumulate'):.1f} s; state {acc.nbytes() / 2**20:.0f} MiB "
          f"(independent of the token count)")
    print(f"once per analysis: logit effects + neighbours {t_effects:.1f} s, {len(docs):,} documents {t_docs:.1f} s, "
          f"database write {t_db:.1f} s; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")


if __name__ == "__main__":
    main()
