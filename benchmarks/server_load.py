"""Load test of the feature API: N concurrent clients against uvicorn on 127.0.0.1.

    .venv/bin/python benchmarks/server_load.py [--clients 50] [--seconds 10] [--d-sae 4608]

Setup (not timed): a TopK SAE of ``--d-sae`` latents for the default model (random decoder,
as in the analysis tests) is analyzed by the real pipeline into a scratch database of the local
MongoDB-wire-protocol server (or ``$MONGO_URI``); ``uvicorn server.app:app`` is started on a free
loopback port. Then, per route, ``--clients`` concurrent clients request as fast as they can for
``--seconds`` (and at most ``--max-requests`` requests in all). The floor row is ``/api/health``
(routing + JSON, one database ping): what any route costs at least on this server.
Clients run in this process (asyncio, a minimal keep-alive HTTP/1.1 client) and share the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DB_NAME = "saes_server_bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_sae(d_sae: int, workdir: Path) -> Path:
    """A TopK SAE for the default model with random unit decoder rows (as in the analysis tests)."""
    import torch

    sys.path.insert(0, str(REPO))
    from saes.sae.formats import save_sae
    from saes.sae.registry import build
    from tests.analysis.conftest import sae_metadata

    sae = build({"architecture": "topk", "d_sae": d_sae, "k": 32}, d_in=576)
    gen = torch.Generator().manual_seed(0)
    sae.initialize(gen)
    with torch.no_grad():
        sae.b_enc_F.copy_(torch.randn(d_sae, generator=gen) * 0.2)
    save_sae(sae, workdir / "sae", sae_metadata())
    return workdir


def analyze(sae_path: Path, tokens: int, uri: str) -> str:
    """Analyze the SAE into ``DB_NAME``; returns the dictionary id."""
    from hydra import compose, initialize_config_dir

    from saes.analysis.config import register_analyze_configs
    from saes.analysis.run import run_analysis

    register_analyze_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=[f"sae_path={sae_path}", "device=cpu", f"mongo_uri='{uri}'",
                                            f"mongo_db={DB_NAME}", f"analysis.tokens={tokens}"])  # fmt: skip
    return run_analysis(cfg, progress=True)["dictionary_id"]


class Connection:
    """A minimal HTTP/1.1 keep-alive client on one socket (GET only): a load generator that costs
    far less CPU per request than a full client library, so the server gets the cores."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(host: str, port: int, paths: list[str], clients: int, seconds: float, max_requests: int) -> dict[str, float]:
    """``clients`` connections loop over random ``paths`` until time or count runs out; latencies in ms."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        conn = Connection(host, port)
        try:
            while time.perf_counter() < deadline and len(latencies) + errors < max_requests:
                t0 = time.perf_counter()
                try:
                    status, _ = await conn.get(random.choice(paths))
                except (OSError, asyncio.IncompleteReadError, StopIteration, ValueError):
                    errors += 1
                    conn.close()
                    conn = Connection(host, port)
                    continue
                if status == 200:
                    latencies.append((time.perf_counter() - t0) * 1000)
                else:
                    errors += 1
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies)
    return {"requests": len(lat), "errors": errors, "rps": len(lat) / wall,
            "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan")}  # fmt: skip


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise TimeoutError("uvicorn did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per route")
    parser.add_argument("--max-requests", type=int, default=20000, help="requests per route at most")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--sae", type=Path, help="a trained SAE (run folder) to analyze; default: a random one")
    parser.add_argument("--d-sae", type=int, default=4608, help="latents of the random SAE")
    parser.add_argument("--tokens", type=int, default=16384, help="analysis tokens (setup)")
    args = parser.parse_args()

    from saes.store import connect, ensure_server, feature_columns

    uri = os.environ.get("MONGO_URI") or ensure_server()
    with tempfile.TemporaryDirectory() as tmp:
        dictionary = analyze(args.sae or random_sae(args.d_sae, Path(tmp)), args.tokens, uri)
        db = connect(uri, DB_NAME)
        columns = feature_columns(db, dictionary)
        alive = [int(i) for i, d in zip(columns["index"], columns["density"]) if d > 0]
        n_features = len(columns["index"])
        port = free_port()
        env = {**os.environ, "MONGO_URI": uri, "SAES_MONGO_DB": DB_NAME}
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "server.app:app", "--host", "127.0.0.1",
                                 "--port", str(port), "--log-level", "warning", "--workers", str(args.workers)], cwd=REPO, env=env)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, proc)
            d = f"/api/dictionaries/{dictionary}"
            routes = {
                "health (floor)": ["/api/health"],
                "feature page (alive)": [f"{d}/features/{i}" for i in alive],
                "feature list (50, sorted)": [f"{d}/features?sort={s}&skip={k}" for s in ("density", "max_activation")
                                              for k in range(0, n_features, 50)],  # fmt: skip
            }
            for paths in routes.values():  # warm caches (columns, connections) once
                httpx.get(base + paths[0], timeout=30)
            print(f"\nfeature API on 127.0.0.1, {args.clients} concurrent clients, {args.seconds:g} s per route, "
                  f"{n_features} features ({len(alive)} alive), {args.workers} uvicorn worker(s), {os.cpu_count()} CPU cores shared by clients and server\n")  # fmt: skip
            print(f"{'route':28} {'requests':>9} {'errors':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
            for name, paths in routes.items():
                r = asyncio.run(load("127.0.0.1", port, paths, args.clients, args.seconds, args.max_requests))
                print(f"{name:28} {r['requests']:9d} {r['errors']:7d} {r['rps']:8.0f} {r['p50']:8.1f} {r['p99']:8.1f}")
        finally:
            proc.terminate()
            proc.wait(10)
            db.client.drop_database(DB_NAME)
            db.client.close()


if __name__ == "__main__":
    main()
