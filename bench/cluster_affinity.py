"""Affinity routing vs random routing on Ray Serve: prompt-cache hits and TTFT (not a test).

Starts `ember serve --replicas 2` (a local Ray of its own, two replicas of the default model on this
machine), then runs the same multi-session workload twice in one run: each session is a long prefix of
its own plus short turns, sent one turn after another, several sessions at once.

    affinity  every turn carries `x-session-affinity: <session>`: the session's owner on the ring
    random    a fresh random key on every turn: a uniformly random replica (keyless requests would not
              do: with both replicas idle Serve's least-loaded pick breaks the tie the same way, so
              sequential keyless turns all land on one replica, a pseudo-affinity)

Each phase gets prefixes of its own (a prefix the other phase cached never helps). The KV cache is sized
so that one replica holds half the sessions' prefixes but not all of them: what affinity is for.
Reports cached prompt tokens / prompt tokens, TTFT p50 / p90 (streamed, first text), and per phase how
many sessions were served by more than one replica.

    .venv/bin/python bench/cluster_affinity.py [--sessions 16 --turns 4 --prefix-words 160 --concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import httpx

from ember.loadgen.bench import WORDS, percentile

MODEL = "accounts/fireworks/models/smollm2-135m-instruct"


@dataclass
class Phase:
    name: str
    prompt_tokens: int = 0
    cached_tokens: int = 0
    ttft_s: list[float] = field(default_factory=list)
    replicas_of: dict[int, set[str]] = field(default_factory=dict)
    errors: int = 0

    def line(self) -> str:
        hit = self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        split = sum(1 for r in self.replicas_of.values() if len(r) > 1)
        return (f"{self.name:>8}: cached {self.cached_tokens:6d} / {self.prompt_tokens:6d} prompt tokens "
                f"({hit:5.1%})  TTFT p50 {percentile(self.ttft_s, 50):.3f} s  p90 {percentile(self.ttft_s, 90):.3f} s"
                f"  sessions on >1 replica {split}/{len(self.replicas_of)}  errors {self.errors}")


async def turn(http: httpx.AsyncClient, url: str, prompt: str, key: str | None, phase: Phase, s: int,
               max_tokens: int) -> None:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    headers = {"x-session-affinity": key} if key else {}
    t0 = time.monotonic()
    ttft = None
    usage = None
    async with http.stream("POST", url + "/v1/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            await r.aread()
            phase.errors += 1
            return
        phase.replicas_of.setdefault(s, set()).add(r.headers.get("x-ember-replica", "?"))
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            ev = json.loads(line[6:])
            if ttft is None and any(c.get("text") for c in ev.get("choices", [])):
                ttft = time.monotonic() - t0
            usage = ev.get("usage") or usage
    if ttft is not None:
        phase.ttft_s.append(ttft)
    if usage:
        phase.prompt_tokens += usage["prompt_tokens"]
        phase.cached_tokens += (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)


async def run_phase(url: str, name: str, affinity: bool, a: argparse.Namespace, seed: int) -> Phase:
    rng = random.Random(seed)
    prefixes = [" ".join(rng.choice(WORDS) for _ in range(a.prefix_words)) for _ in range(a.sessions)]
    phase = Phase(name)
    sem = asyncio.Semaphore(a.concurrency)
    async with httpx.AsyncClient(timeout=300) as http:
        async def session(s: int) -> None:
            async with sem:
                history = prefixes[s]
                for t in range(a.turns):
                    history += f"\nTurn {t}: " + " ".join(rng.choice(WORDS) for _ in range(8))
                    key = f"{name}-session-{s}" if affinity else f"{name}-{rng.getrandbits(64):x}"
                    await turn(http, url, history, key, phase, s, a.max_tokens)

        await asyncio.gather(*(session(s) for s in range(a.sessions)))
    return phase


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_two_replicas(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ember serve exited"
        seen = set()
        for i in range(16):  # a key each: spread over the ring (keyless sequential requests hit one replica)
            try:
                r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": f"warm {i}", "max_tokens": 1},
                               headers={"x-session-affinity": f"warm-{i}"}, timeout=30)
                if r.status_code == 200:
                    seen.add(r.headers.get("x-ember-replica"))
            except httpx.HTTPError:
                pass
        if len(seen) == 2:
            return
        time.sleep(2)
    raise TimeoutError("two replicas did not come up")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--prefix-words", type=int, default=160)
    p.add_argument("--concurrency", type=int, default=4, help="sessions in flight at once")
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--kv-cache-mb", type=int, default=96,
                   help="per replica; 96 MiB of SmolLM2 is ~2,200 tokens: half the sessions' prefixes")
    p.add_argument("--random-first", action="store_true", help="run the random phase first")
    a = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = tempfile.mkdtemp(prefix="ember-affinity-")
    log = open(os.path.join(data, "serve.log"), "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "ember", "serve", "--replicas", "2", "--threads-per-replica", "1",
                             "--port", str(port), "--kv-cache-mb", str(a.kv_cache_mb), "--data-dir", data,
                             "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_two_replicas(url, proc, 300)
        order = [("random", False), ("affinity", True)]
        if not a.random_first:
            order.reverse()
        print(f"{a.sessions} sessions x {a.turns} turns, prefix {a.prefix_words} words, {a.concurrency} at once, "
              f"2 replicas x 1 thread, --kv-cache-mb {a.kv_cache_mb}", flush=True)
        phases = {}
        for i, (name, affinity) in enumerate(order):
            t0 = time.monotonic()
            phases[name] = asyncio.run(run_phase(url, name, affinity, a, seed=1000 + i))
            print(phases[name].line() + f"  ({time.monotonic() - t0:.0f} s)", flush=True)
        aff, rnd = phases["affinity"], phases["random"]
        if rnd.cached_tokens:
            print(f"cached tokens affinity / random: {aff.cached_tokens / rnd.cached_tokens:.2f}x; TTFT p50 "
                  f"{percentile(aff.ttft_s, 50) / percentile(rnd.ttft_s, 50):.2f}x")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


if __name__ == "__main__":
    main()
