"""Normal streams beside hostile requests: do the input bounds keep the others served?

Eight streaming clients send completions for a fixed time, once undisturbed and once while hostile
clients loop over requests that are costly without those bounds (bounded in count and time, 127.0.0.1 only):

    1. a 2.3 MB completion body of 300,000 token ids with one bad, chat of 50,000 bad messages,
       /detokenize of 300,000 non-ids
    2. a 7 MB prompt, a 7 MB prediction, /tokenize of 7 MB
    3. 8 MB of headers, a declared 200 MB body with no key (then nothing sent), a declared 200 MB body
       with a key
    4. requests with a JSON schema to compile and a long prompt, from an account whose request rate is
       spent (each a 429)

It reports the normal streams' TTFT and ITL (p50 / p90) in both runs and their ratios, and the server's
peak RSS (VmHWM) in each run: each run gets a fresh server process, so each peak is its own. Goal: the
ratios within 1.2x, the peaks within 100 MB.

    .venv/bin/python bench/hostile_requests.py [--duration 30] [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

MODEL = "accounts/fireworks/models/smollm2-135m-instruct"
WORDS = "the quick brown fox jumps over a lazy dog while seven wise owls count silver stars".split()


@dataclass
class Streams:
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0


@dataclass
class Hostile:
    sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    slowest_s: float = 0.0
    client_cpu_s: float = 0.0
    """CPU time the hostile clients themselves spent (building and sending their payloads)."""


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def serve(port: int, data_dir: str, kv_cache_mb: int) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "ember", "serve", "--port", str(port), "--data-dir", data_dir,
                          "--kv-cache-mb", str(kv_cache_mb), "--log-level", "warning"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(900):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return p
        except httpx.HTTPError:
            pass
        if p.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        time.sleep(0.2)
    raise RuntimeError("server did not start")


def cpu_s(pid: int) -> float:
    """The process's user + system CPU time so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_store(data_dir: str) -> tuple[str, str]:
    """Account `acme` (the normal clients and most hostile ones) and `spent` (a request rate of 1 a minute)."""
    from ember.config import StoreConfig
    from ember.store.accounts import Accounts
    from ember.store.db import open_store
    from ember.store.quotas import Quotas

    store = open_store(StoreConfig(data_dir=data_dir))
    key = Accounts(store).create("acme", "ops@acme.test").key.key
    spent = Accounts(store).create("spent", "ops@spent.test").key.key
    Quotas(store).set_value("spent", "requests-per-minute", 1, allow_missing=True)
    store.close()
    return key, spent


async def stream_client(url: str, key: str, until: float, seed: int, out: Streams, max_tokens: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=120) as c:
        while time.monotonic() < until:
            prompt = " ".join(rng.choice(WORDS) for _ in range(48))
            body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                    "temperature": 0.7, "ignore_eos": True}
            t0 = time.monotonic()
            last = None
            try:
                async with c.stream("POST", "/v1/completions", json=body) as r:
                    if r.status_code != 200:
                        out.errors += 1
                        await r.aread()
                        continue
                    async for line in r.aiter_lines():
                        if not line.startswith("data: {"):
                            continue
                        now = time.monotonic()
                        if last is None:
                            out.ttft.append(now - t0)
                        else:
                            out.itl.append(now - last)
                        last = now
                out.requests += 1
            except httpx.HTTPError:
                out.errors += 1


def raw_request(port: int, head: bytes, body: bytes = b"") -> int:
    """Send a raw request and return the answer's status (0: none, the connection was closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(head)
            if body:
                s.sendall(body)
        except OSError:
            pass
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


def hostile_cases(port: int, key: str, spent: str) -> list[tuple[str, object]]:
    """(name, a callable sending one hostile request and returning its status)."""
    ids = list(range(300_000))
    ids[150_000] = -1
    bad_ids = json.dumps({"model": MODEL, "prompt": ids})
    bad_chat = json.dumps({"model": MODEL, "messages": [{"role": "nobody", "content": 1}] * 50_000})
    bad_detok = json.dumps({"tokens": ["x"] * 300_000})
    huge = "lorem ipsum " * 600_000
    schema = {"type": "object", "properties": {f"field_{i}": {"type": "string"} for i in range(60)}}
    url = f"http://127.0.0.1:{port}"
    auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}

    def post(path: str, content: str, headers: dict[str, str] = auth) -> object:
        data = content.encode()  # once: the client's own work must not be what slows the server's host
        return lambda: httpx.post(url + path, content=data, headers=headers, timeout=120).status_code

    big_headers = (b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-filler: " + b"a" * (8 * 1024 * 1024)
                   + b"\r\n\r\n")
    no_key_body = (b"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                   b"content-length: 200000000\r\n\r\n")
    keyed_body = (b"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                  b"authorization: Bearer " + key.encode() + b"\r\ncontent-length: 200000000\r\n\r\n")
    spent_auth = {"authorization": f"Bearer {spent}", "content-type": "application/json"}
    return [
        ("1: 300k ids, one bad", post("/v1/completions", bad_ids)),
        ("1: chat, 50k bad messages", post("/v1/chat/completions", bad_chat)),
        ("1: detokenize 300k non-ids", post("/detokenize", bad_detok)),
        ("2: 7 MB prompt", post("/v1/completions", json.dumps({"model": MODEL, "prompt": huge}))),
        ("2: 7 MB prediction", post("/v1/completions", json.dumps({"model": MODEL, "prompt": "hi",
                                                                   "prediction": huge}))),
        ("2: tokenize 7 MB", post("/tokenize", json.dumps({"prompt": huge}))),
        ("3: 8 MB of headers", lambda: raw_request(port, big_headers)),
        ("3: 200 MB body, no key", lambda: raw_request(port, no_key_body, b'{"prompt": "')),
        ("3: 200 MB body, a key", lambda: raw_request(port, keyed_body, b'{"prompt": "')),
        ("4: schema + long prompt, rate spent", post("/v1/completions", json.dumps(
            {"model": MODEL, "prompt": "Give JSON. " * 3000, "max_tokens": 8,
             "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}),
            spent_auth)),
    ]


def hostile_loop(port: int, key: str, spent: str, duration: float, max_requests: int, interval: float,
                 seed: int, niceness: int, results: Any) -> None:
    """One hostile client, in its own process (its sending must not take the normal clients' CPU time
    in their process): random cases until the time or the count is up. It stands in for another machine:
    at `niceness` the scheduler gives this host's two cores to the server and the normal clients first,
    so what is measured is what the server spends on the hostile requests, not what their senders do."""
    os.nice(niceness)
    cpu0 = time.process_time()
    cases = hostile_cases(port, key, spent)
    rng = random.Random(seed)
    out = Hostile()
    until = time.monotonic() + duration
    while time.monotonic() < until and out.sent < max_requests:
        name, send = rng.choice(cases)
        t = time.monotonic()
        try:
            status = send()
        except httpx.HTTPError as e:
            status = type(e).__name__
        out.slowest_s = max(out.slowest_s, time.monotonic() - t)
        out.sent += 1
        k = f"{name} -> {status}"
        out.statuses[k] = out.statuses.get(k, 0) + 1
        time.sleep(max(0.0, interval - (time.monotonic() - t)))
    out.client_cpu_s = time.process_time() - cpu0
    results.put(out)


async def phase(port: int, key: str, spent: str, duration: float, hostile: bool, args: argparse.Namespace
                ) -> tuple[Streams, Hostile | None]:
    url = f"http://127.0.0.1:{port}"
    # Warm-up: the first requests pay one-time costs in both runs alike.
    warm = Streams()
    await asyncio.gather(*(stream_client(url, key, time.monotonic() + args.warmup, 1000 + i, warm, args.max_tokens)
                           for i in range(args.streams)))
    if hostile:  # the spent account's one request a minute, spent
        httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1},
                   headers={"authorization": f"Bearer {spent}"}, timeout=60)
    until = time.monotonic() + duration
    streams = Streams()
    tasks = [stream_client(url, key, until, i, streams, args.max_tokens) for i in range(args.streams)]
    h = None
    procs = []
    if hostile:
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        per_client = args.max_hostile // args.hostile_clients
        procs = [ctx.Process(target=hostile_loop, args=(port, key, spent, duration, per_client, args.hostile_interval,
                                                         99 + i, args.hostile_nice, results))
                 for i in range(args.hostile_clients)]
        for p in procs:
            p.start()
    await asyncio.gather(*tasks)
    if procs:
        h = Hostile()
        for _ in procs:
            one = await asyncio.to_thread(results.get, True, 120)
            h.sent += one.sent
            h.slowest_s = max(h.slowest_s, one.slowest_s)
            h.client_cpu_s += one.client_cpu_s
            for k, v in one.statuses.items():
                h.statuses[k] = h.statuses.get(k, 0) + v
        for p in procs:
            p.join(60)
    return streams, h


def summary(s: Streams) -> dict:
    return {"requests": s.requests, "errors": s.errors,
            "ttft_p50_ms": pct(s.ttft, 0.5) * 1000, "ttft_p90_ms": pct(s.ttft, 0.9) * 1000,
            "itl_p50_ms": pct(s.itl, 0.5) * 1000, "itl_p90_ms": pct(s.itl, 0.9) * 1000}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of each run")
    ap.add_argument("--streams", type=int, default=8, help="normal streaming clients")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens each normal request generates")
    ap.add_argument("--hostile-clients", type=int, default=2)
    ap.add_argument("--max-hostile", type=int, default=400, help="most hostile requests in the run")
    ap.add_argument("--hostile-interval", type=float, default=0.25,
                    help="seconds between the starts of one hostile client's requests")
    ap.add_argument("--hostile-nice", type=int, default=19,
                    help="niceness of the hostile clients (0: they compete with the server for this host's cores "
                         "as equals, which measures their own sending as well as the server's handling)")
    ap.add_argument("--json", default=None, help="write the results here too")
    ap.add_argument("--url", default=None, help="a running ember (http://127.0.0.1:PORT) instead of starting one")
    ap.add_argument("--api-key", default=None, help="with --url: a key of an account with room in its quotas")
    ap.add_argument("--spent-key", default=None, help="with --url: a key of an account limited to 1 request/min")
    ap.add_argument("--pid", type=int, default=None, help="with --url: the server's pid, for its peak RSS")
    ap.add_argument("--kv-cache-mb", type=int, default=64,
                    help="the started server's KV cache: small, so that the warm-up touches all of it and the "
                         "runs' peak RSS differ by what the requests cost, not by how much cache they touched")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of normal streams before each run")
    ap.add_argument("--rounds", type=int, default=1,
                    help="undisturbed / hostile pairs, alternated: on a shared host the others' load drifts")
    args = ap.parse_args()
    pooled = {"undisturbed": Streams(), "hostile": Streams()}
    runs: list[dict] = []
    peaks: dict[str, list[float]] = {"undisturbed": [], "hostile": []}
    for rnd in range(args.rounds):
        for name, hostile in (("undisturbed", False), ("hostile", True)):
            run = one_run(args, hostile) | {"run": name, "round": rnd}
            runs.append(run)
            streams = run.pop("streams")
            pooled[name].ttft += streams.ttft
            pooled[name].itl += streams.itl
            pooled[name].requests += streams.requests
            pooled[name].errors += streams.errors
            peaks[name].append(run["peak_rss_mb"])
            print(f"# {json.dumps(run)}", file=sys.stderr, flush=True)
    u, d = summary(pooled["undisturbed"]), summary(pooled["hostile"])
    results = {"runs": runs, "undisturbed": u | {"peak_rss_mb": max(peaks["undisturbed"])},
               "hostile": d | {"peak_rss_mb": max(peaks["hostile"])},
               "ratios": {k: d[k] / u[k] for k in ("ttft_p50_ms", "ttft_p90_ms", "itl_p50_ms", "itl_p90_ms")},
               "peak_rss_delta_mb": max(peaks["hostile"]) - max(peaks["undisturbed"])}
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def one_run(args: argparse.Namespace, hostile: bool) -> dict:
    """One run on a fresh server (or the --url one, its peak RSS reset): the normal streams' samples,
    the server's peak RSS and CPU time, and what the hostile clients got."""
    proc = None
    if args.url:
        port = int(args.url.rsplit(":", 1)[1].rstrip("/"))
        key, spent, pid = args.api_key, args.spent_key or args.api_key, args.pid
        if pid is not None:  # the peak so far is forgotten: this run's own (Linux >= 4.0)
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
    else:
        data_dir = tempfile.mkdtemp(prefix="ember-hostile-bench-")
        key, spent = make_store(data_dir)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = serve(port, data_dir, args.kv_cache_mb)
        pid = proc.pid
    try:
        cpu0 = cpu_s(pid) if pid else float("nan")
        streams, h = asyncio.run(phase(port, key, spent, args.duration, hostile, args))
        out = summary(streams) | {"streams": streams,
                                  "peak_rss_mb": vm_hwm_mb(pid) if pid else float("nan"),
                                  "server_cpu_s": cpu_s(pid) - cpu0 if pid else float("nan")}
        if h is not None:
            out["hostile"] = {"sent": h.sent, "slowest_s": h.slowest_s, "client_cpu_s": h.client_cpu_s,
                              "answers": h.statuses}
        return out
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)

if __name__ == "__main__":
    raise SystemExit(main())
