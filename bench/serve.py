"""`ftkit serve`: dynamic batching against one request at a time, and N adapter runs in one server against N servers.

    .venv/bin/python bench/serve.py                       # writes bench/SERVE.md
    .venv/bin/python bench/serve.py --only cls --rounds 1 --results /tmp/serve.md

Throughput: for each workload and concurrency (1, 4, 16 clients, each sending its next request as soon as the last
is answered), the same requests go to a server started with ``--max-batch 16`` (batched) and with ``--max-batch 1``
(one request at a time); rounds alternate which goes first, and the table gives requests/s and p50/p99 latency (the
median over rounds) and the ratio batched / one-at-a-time measured in the same round. cls: a short LoRA run on
minilm (polarity texts, one per request); gen: smollm2-135m itself, greedy, a fixed number of new tokens per
request at most (greedy: both sides generate the same tokens, so they do the same work).

Memory: N LoRA runs of minilm served by one process (one copy of the base) against N processes serving one run
each: resident memory (VmRSS) of the server processes once every model has answered a request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FTKIT = [sys.executable, "-m", "ftkit"]
CONCURRENCY = (1, 4, 16)


class Server:
    def __init__(self, *args: str):
        self.proc = subprocess.Popen([*FTKIT, "serve", *args, "--port", "0"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.port, found = None, threading.Event()

        def read():
            for line in self.proc.stderr:
                if m := re.search(r"listening on http://127\.0\.0\.1:(\d+)", line):
                    self.port = int(m.group(1))
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        found.wait(120)
        if self.port is None:
            raise SystemExit(f"server did not start: {args}")
        self.url = f"http://127.0.0.1:{self.port}"
        end = time.monotonic() + 600
        while httpx.get(f"{self.url}/ready", timeout=10).status_code != 200:
            if time.monotonic() > end or self.proc.poll() is not None:
                raise SystemExit(f"server not ready: {args}")
            time.sleep(0.5)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(url: str, route: str, bodies: list[dict], clients: int) -> dict:
    """Send ``bodies`` from ``clients`` concurrent clients; requests/s and latency percentiles (ms)."""
    latencies: list[float] = []

    async def client(queue: asyncio.Queue, http: httpx.AsyncClient):
        while not queue.empty():
            body = queue.get_nowait()
            t = time.perf_counter()
            r = await http.post(f"{url}{route}", json=body)
            latencies.append(time.perf_counter() - t)
            if r.status_code != 200:
                raise SystemExit(f"{route}: {r.status_code} {r.text}")

    async def main():
        queue: asyncio.Queue = asyncio.Queue()
        for b in bodies:
            queue.put_nowait(b)
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
            await asyncio.gather(*(client(queue, http) for _ in range(clients)))

    start = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - start
    latencies.sort()
    pick = lambda q: 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {"rps": len(bodies) / wall, "p50": pick(0.5), "p99": pick(0.99)}


def train_runs(n: int, folder: Path) -> list[Path]:
    runs = []
    for i in range(n):
        out = folder / f"cls{i}"
        subprocess.run([*FTKIT, "train", "--model", "minilm", "--data", "polarity", "--max-steps", "3",
                        "--batch-size", "8", "--seed", str(i), "--output", str(out), "--quiet"], check=True, cwd=ROOT)
        runs.append(out)
    return runs


def texts(n: int) -> list[str]:
    from ftkit.data.sources import read_table

    table = read_table("polarity")
    column = table.columns["text"]
    return [column[i % len(column)] for i in range(n)]


def throughput(name: str, serve_args: list[str], route: str, bodies_for, rounds: int) -> list[dict]:
    rows = []
    for c in CONCURRENCY:
        per = {"batched": [], "single": [], "ratio": []}
        for r in range(rounds):
            order = ["batched", "single"] if r % 2 == 0 else ["single", "batched"]
            got = {}
            for side in order:
                server = Server(*serve_args, "--max-batch", "16" if side == "batched" else "1")
                try:
                    load(server.url, route, bodies_for(min(4, c)), min(4, c))  # warm-up
                    got[side] = load(server.url, route, bodies_for(c), c)
                finally:
                    server.stop()
            per["batched"].append(got["batched"])
            per["single"].append(got["single"])
            per["ratio"].append(got["batched"]["rps"] / got["single"]["rps"])
        med = lambda side, k: statistics.median(x[k] for x in per[side])  # noqa: E731
        rows.append({"workload": name, "clients": c, **{f"{s}_{k}": med(s, k) for s in ("batched", "single")
                                                        for k in ("rps", "p50", "p99")},
                     "ratio": statistics.median(per["ratio"]), "requests": len(bodies_for(c))})
        print(rows[-1], flush=True)
    return rows


def memory(runs: list[Path]) -> dict:
    body = {"input": "a fine film"}
    one = Server(*[f"m{i}={r}" for i, r in enumerate(runs)])
    try:
        for i in range(len(runs)):
            httpx.post(f"{one.url}/v1/predict", json={**body, "model": f"m{i}"}, timeout=120).raise_for_status()
        shared = one.rss_mib()
    finally:
        one.stop()
    separate = []
    for r in runs:
        s = Server(str(r))
        try:
            httpx.post(f"{s.url}/v1/predict", json=body, timeout=120).raise_for_status()
            separate.append(s.rss_mib())
        finally:
            s.stop()
    return {"n": len(runs), "shared_mib": shared, "separate_mib": sum(separate), "one_run_mib": separate[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["cls", "gen", "memory"], action="append")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--results", type=Path, default=HERE / "SERVE.md")
    args = ap.parse_args()
    only = set(args.only or ["cls", "gen", "memory"])
    rows, mem = [], None
    with tempfile.TemporaryDirectory() as d:
        runs = train_runs(args.adapters if "memory" in only else 1, Path(d)) if only & {"cls", "memory"} else []
        if "cls" in only:
            pool = texts(512)
            counts = {1: 64, 4: 128, 16: 256}
            rows += throughput("cls (minilm LoRA run)", [str(runs[0])], "/v1/predict",
                               lambda c: [{"input": t} for t in pool[:counts[c]]], args.rounds)
        if "gen" in only:
            pool = texts(64)
            counts = {1: 8, 4: 16, 16: 32}
            rows += throughput("gen (smollm2-135m, 16 new tokens)", ["smollm2-135m"], "/v1/completions",
                               lambda c: [{"prompt": t[:200], "max_tokens": 16, "temperature": 0}
                                          for t in pool[:counts[c]]], args.rounds)
        if "memory" in only:
            mem = memory(runs)
            print(mem, flush=True)
    write(args, rows, mem)


def write(args, rows: list[dict], mem: dict | None) -> None:
    command = " ".join([".venv/bin/python", "bench/serve.py", *sys.argv[1:]])
    lines = ["# `ftkit serve` benchmark", "",
             f"`{command}` on {platform.node() or 'this machine'} ({os.cpu_count()} CPUs, "
             f"{platform.python_version()}), {time.strftime('%Y-%m-%d')}; median of "
             f"{args.rounds} alternating round(s). See the docstring of bench/serve.py for the method.", ""]
    if rows:
        lines += ["| workload | clients | requests | batched req/s | p50 ms | p99 ms | one-at-a-time req/s | p50 ms | "
                  "p99 ms | batched / one-at-a-time |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['workload']} | {r['clients']} | {r['requests']} | {r['batched_rps']:.1f} | "
                         f"{r['batched_p50']:.0f} | {r['batched_p99']:.0f} | {r['single_rps']:.1f} | "
                         f"{r['single_p50']:.0f} | {r['single_p99']:.0f} | **{r['ratio']:.2f}x** |")
        lines.append("")
    if mem:
        lines += [f"Memory, {mem['n']} LoRA runs of minilm: one server holding all {mem['n']} (one copy of the base) "
                  f"**{mem['shared_mib']:.0f} MiB** resident, against {mem['n']} servers of one run each "
                  f"**{mem['separate_mib']:.0f} MiB** together ({mem['one_run_mib']:.0f} MiB for one run alone): "
                  f"{mem['separate_mib'] / mem['shared_mib']:.1f}x less.", ""]
    args.results.write_text("\n".join(lines))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
