"""Predicted outputs on a rewrite task: ember with and without `prediction`, side by side in one run.

    .venv/bin/python bench/speculation.py [--rounds 3] [--match 0.9] [--ember-arg=--quantization=none]

For each passage the model is asked to copy it. The greedy answer without a prediction is the reference;
the prediction is that answer with every tenth word changed (`--match`: the share of words kept), as an
editor's draft would be. Both runs must return identical text; the figure is generated tokens per
second of each, and their ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PASSAGES = [
    "The committee met on Tuesday to review the budget for the coming year. After a long discussion, "
    "the members agreed to increase funding for the public library and to repair the roads near the "
    "old market. The mayor thanked everyone for their patience and promised a full report next month.",
    "To make bread, mix flour, water, salt and yeast in a large bowl. Knead the dough for ten minutes "
    "until it is smooth, then let it rise in a warm place for an hour. Shape the loaf, let it rise "
    "again, and bake it in a hot oven until the crust is golden brown.",
    "Our new release improves startup time, fixes a crash when the network is unavailable, and adds "
    "support for exporting reports as spreadsheets. Users who upgrade should back up their settings "
    "first, because the configuration format has changed in a small way.",
]
SWAPS = ["blue", "quickly", "seven", "garden", "window", "silver", "happy", "river", "paper", "stone"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edit(text: str, keep: float) -> str:
    """Change one word in every round(1 / (1 - keep)) words, deterministically."""
    words = text.split(" ")
    every = max(2, round(1 / max(1e-9, 1 - keep)))
    for i in range(every // 2, len(words), every):
        words[i] = SWAPS[i % len(SWAPS)]
    return " ".join(words)


def run(url: str, prompt: str, max_tokens: int, prediction: str | None) -> tuple[str, int, float, dict]:
    body: dict = {"model": "smollm2-135m-instruct", "prompt": prompt, "max_tokens": max_tokens,
                  "temperature": 0, "perf_metrics_in_response": True}
    if prediction is not None:
        body["prediction"] = prediction
    t = time.perf_counter()
    r = httpx.post(url + "/v1/completions", json=body, timeout=600)
    dt = time.perf_counter() - t
    r.raise_for_status()
    j = r.json()
    return j["choices"][0]["text"], j["usage"]["completion_tokens"], dt, j["perf_metrics"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--match", type=float, default=0.9, help="share of the prediction's words left unchanged")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--ember-arg", action="append", default=[],
                    help="extra flag for `ember serve` (repeatable), e.g. --ember-arg=--quantization=none")
    a = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "ember"), "serve", "--port", str(port),
                               "--log-level", "warning", *a.ember_arg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        rows = []
        for passage in PASSAGES:
            prompt = f"Copy the text below exactly.\n\nText: {passage}\n\nCopy:"
            run(url, prompt, 8, None)  # warm-up (also primes the prefix cache for both variants)
            ref, n, _, _ = run(url, prompt, a.max_tokens, None)
            pred = edit(ref, a.match)
            plain_t, spec_t, acc = [], [], []
            for _ in range(a.rounds):
                text, n1, dt1, _ = run(url, prompt, a.max_tokens, None)
                text2, n2, dt2, m = run(url, prompt, a.max_tokens, pred)
                if text != ref or text2 != ref:
                    print("MISMATCH: speculation changed the output", file=sys.stderr)
                    return 1
                plain_t.append(n1 / dt1)
                spec_t.append(n2 / dt2)
                acc.append(m.get("speculation-acceptance", 0.0))
            rows.append((n, statistics.median(plain_t), statistics.median(spec_t), statistics.median(acc)))
        print(f"| passage | tokens | without prediction | with prediction ({a.match:.0%} of words kept) | "
              "speedup | draft acceptance |")
        print("| --- | --- | --- | --- | --- | --- |")
        for i, (n, p, s, acc) in enumerate(rows):
            print(f"| {i + 1} | {n} | {p:.1f} tok/s | {s:.1f} tok/s | {s / p:.2f}x | {acc:.2f} |")
        ps = statistics.median(r[1] for r in rows)
        ss = statistics.median(r[2] for r in rows)
        print(f"| median | | {ps:.1f} tok/s | {ss:.1f} tok/s | {ss / ps:.2f}x | |")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
