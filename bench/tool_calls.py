"""Required tool calls vs the same requests unconstrained: generated tokens/s at 8 concurrent streams.

    PYTHONPATH=. .venv/bin/python bench/tool_calls.py [--streams 8] [--requests 32] [--rounds 2]
                                                      [--model PATH] [--ember-arg=--kv-cache-mb=256]

One `ember serve` on 127.0.0.1. Each request is a streamed chat whose `tools` define one function with a
few fields; the constrained run asks for it with `tool_choice: "required"` (every token masked by the
call's grammar), the unconstrained run sends the very same messages and tools with `tool_choice: "none"`
(the same rendered prompt, free text) and `ignore_eos`, with `max_tokens` set to the number of tokens the
constrained answer to that request had: both runs generate exactly the same token counts, so their
tokens/s compare. Greedy, so the constrained answers, and with them the counts, repeat every round.

Figures: generated tokens / wall time of each run (`--requests` requests, `--streams` in flight, closed
loop), runs alternating constrained / unconstrained `--rounds` times after one unmeasured warm-up each; the
ratio of the summed figures is what issue 21 asks to stay >= 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TOOL = {"type": "function", "function": {
    "name": "create_event", "description": "Put an event in the user's calendar.",
    "parameters": {"type": "object", "properties": {
        "title": {"type": "string"},
        "date": {"type": "string", "description": "YYYY-MM-DD"},
        "start_time": {"type": "string", "description": "HH:MM, 24-hour clock"},
        "duration_minutes": {"type": "integer"},
        "attendees": {"type": "array", "items": {"type": "string"}},
        "location": {"type": "string"}},
        "required": ["title", "date", "start_time", "duration_minutes", "attendees", "location"],
        # Closed, as clients' strict mode sends it: an open object lets a small model add keys until
        # max_tokens, and the run would measure cut answers rather than calls.
        "additionalProperties": False}}}
ASKS = [
    "Book a one-hour design review with Ana and Li on 2027-03-04 at 10:00 in room 4B.",
    "Schedule lunch with my sister Maria next Friday, 2027-01-15, at 12:30 at the Italian place on Main Street.",
    "Set up a 30 minute call with the supplier, Tom Becker, on 2027-02-02 at 16:00 over video.",
    "Put the quarterly planning meeting with the whole sales team in the calendar: 2027-04-01, 09:00, 3 hours, HQ.",
    "Add a dentist appointment on 2027-05-20 at 08:15 for 45 minutes at Smile Dental.",
    "Create an event: team offsite with Raj, Chen and Olga, 2027-06-10 from 09:00 for the whole day, in Lisbon.",
    "Remind me of Paul's birthday dinner on 2027-07-07 at 19:00, two hours, at his flat.",
    "Plan a code review session with Sam on 2027-08-12 at 14:00 for 90 minutes in the small meeting room.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu() -> str:
    """The CPU model and the instruction sets that matter to ember's kernels."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.+)", out)
    found = re.search(r"Flags:\s*(.+)", out)
    flags = set(found.group(1).split()) if found else set()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f in flags]
    return f"{model.group(1).strip() if model else 'unknown'}, {os.cpu_count()} CPUs, {' '.join(isa)}"


def body(i: int, constrained: bool, max_tokens: int) -> dict:
    b: dict = {"model": "smollm2-135m-instruct", "stream": True, "stream_options": {"include_usage": True},
               "messages": [{"role": "user", "content": ASKS[i % len(ASKS)]}], "tools": [TOOL],
               "temperature": 0, "max_tokens": max_tokens, "parallel_tool_calls": False}
    if constrained:
        b["tool_choice"] = "required"
    else:
        b.update(tool_choice="none", ignore_eos=True)
    return b


async def one(http: httpx.AsyncClient, b: dict) -> tuple[int, str | None]:
    """Stream one chat; its completion tokens and finish reason."""
    tokens, finish = 0, None
    async with http.stream("POST", "/v1/chat/completions", json=b) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {(await r.aread()).decode()[:500]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            for c in chunk["choices"]:
                finish = c.get("finish_reason") or finish
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return tokens, finish


async def run(url: str, bodies: list[dict], streams: int) -> tuple[float, list[int], list[str | None]]:
    """All `bodies`, `streams` in flight (closed loop): wall seconds, tokens and finish reasons per body."""
    results: list[tuple[int, str | None]] = [(0, None)] * len(bodies)
    queue = list(range(len(bodies)))
    async with httpx.AsyncClient(base_url=url, timeout=900) as http:
        async def worker() -> None:
            while queue:
                i = queue.pop(0)
                results[i] = await one(http, bodies[i])

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(streams)))
        wall = time.perf_counter() - t
    return wall, [n for n, _ in results], [f for _, f in results]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=256, help="the constrained requests' budget")
    ap.add_argument("--model", default=None, help="a GGUF or checkpoint for `ember serve --model`")
    ap.add_argument("--ember-arg", action="append", default=[], help="extra flag for `ember serve` (repeatable)")
    a = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = tempfile.mkdtemp(prefix="ember-bench-tools-")  # never the default store other checkouts migrate
    flags = ["--port", str(port), "--log-level", "warning", "--data-dir", data, *(["--model", a.model] if a.model else []), *a.ember_arg]
    server = subprocess.Popen([sys.executable, "-m", "ember", "serve", *flags], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("ember serve did not start")
            time.sleep(0.5)

        n = a.requests
        constrained = [body(i, True, a.max_tokens) for i in range(n)]
        _, counts, finishes = asyncio.run(run(url, constrained, a.streams))  # warm-up, and the token counts
        cut = sum(f != "tool_calls" for f in finishes)
        free = [body(i, False, counts[i]) for i in range(n)]
        asyncio.run(run(url, free, a.streams))  # warm-up
        sums = {"required": [0.0, 0], "none": [0.0, 0]}
        print(f"CPU: {cpu()}")
        print(f"{n} requests, {a.streams} streams, {sum(counts)} tokens per run "
              f"(min {min(counts)}, max {max(counts)} per request; {cut} constrained answers not calls)")
        print("| round | tool_choice | tokens | wall s | tok/s |\n| --- | --- | --- | --- | --- |")
        for r in range(a.rounds):
            for name, bodies in (("required", constrained), ("none", free)):
                wall, got, fin = asyncio.run(run(url, bodies, a.streams))
                if got != counts:
                    raise SystemExit(f"{name}: token counts differ from the first constrained run")
                if name == "required" and [f == "tool_calls" for f in fin] != [f == "tool_calls" for f in finishes]:
                    raise SystemExit("the greedy constrained answers changed between rounds")
                sums[name][0] += wall
                sums[name][1] += sum(got)
                print(f"| {r + 1} | {name} | {sum(got)} | {wall:.2f} | {sum(got) / wall:.1f} |")
        req = sums["required"][1] / sums["required"][0]
        none = sums["none"][1] / sums["none"][0]
        print(f"\nrequired: {req:.1f} tok/s, unconstrained: {none:.1f} tok/s, ratio {req / none:.3f}")
        return 0
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
