"""Training several SAEs from one forward pass vs one run per SAE, on the default model.

    .venv/bin/python benchmarks/multi_sae.py [--tokens 32768] [--layers 1,2,4,8]

For n = 1, 2, 4, 8 layers (0..n-1, resid_post, TopK defaults) it runs ``python -m saes.train
layer=0-(n-1)`` once, and compares with n separate single-layer runs (measured once per layer and
summed). Times are ``train_seconds`` from metrics.json: every training forward and SAE step, not
model loading or final evaluation. "SAE tokens/s" = n * tokens / seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train_seconds(layers: str, tokens: int, workdir: Path) -> float:
    run_dir = workdir / f"L{layers}"
    cmd = [sys.executable, "-m", "saes.train", f"layer={layers}", f"tokens={tokens}", "logger=none",
           "training.ce_tokens=0", "training.eval_tokens=2048", "data.holdout_tokens=2048",
           f"activations.buffer_tokens={min(tokens, 65536)}", "resume=false", f"hydra.run.dir={run_dir}"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    metrics = sorted(run_dir.glob("**/metrics.json"))
    return json.loads(metrics[0].read_text())["train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32768, help="training tokens per SAE")
    parser.add_argument("--layers", default="1,2,4,8", help="numbers of layers to train together")
    args = parser.parse_args()
    counts = [int(n) for n in args.layers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        single = {layer: train_seconds(str(layer), args.tokens, work) for layer in range(max(counts))}
        print(f"tokens per SAE: {args.tokens:,}; SmolLM2-135M resid_post, TopK k=32, 4,608 latents, CPU threads: default\n")
        print("| SAEs | one process: s | one process: SAE tok/s | separate runs: s | separate: SAE tok/s | speed-up |")
        print("|---|---|---|---|---|---|")
        for n in counts:
            shared = train_seconds(f"0-{n - 1}" if n > 1 else "0", args.tokens, work)
            separate = sum(single[layer] for layer in range(n))
            total = n * args.tokens
            print(f"| {n} | {shared:.1f} | {total / shared:,.0f} | {separate:.1f} | {total / separate:,.0f} | {separate / shared:.2f}x |")


if __name__ == "__main__":
    main()
