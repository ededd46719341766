"""`ember soak`: many clients abuse a live server for a set time; then check nothing was lost or leaked.

Each client loops until the time is up, picking a request kind at random: plain and streamed completions,
n > 1, prompt lists, logprobs with echo, stop strings, json_schema and grammar, predictions, sessions that
share a long prefix, prompts near the context window, malformed bodies, requests with a short deadline,
and greedy canaries whose text was recorded on the idle server first. A fifth of the clients hang up at
random points (mid-stream, or before a non-streamed answer), and some read their streams very slowly.

Every request ends as exactly one outcome:

    ok            a well-formed answer (checked against what was asked: choices, finish reasons, usage,
                  logprobs, echo, JSON that parses, grammar obeyed, canary text unchanged)
    rejected      a 4xx for a malformed body (expected: that is the request's point)
    shed          503 with retry-after (load shedding), or an error event saying "overloaded"
    deadline      408 / an error event "deadline_exceeded" for a request that asked for a short deadline
    disconnected  the client hung up on purpose
    server_error  any other 5xx, or an error event of type server_error          -> failure
    hung          no answer within the client's own deadline                        -> failure
    malformed     an answer that breaks the protocol or what was asked              -> failure
    unexpected    anything else (a 4xx for a valid request, a dropped connection)  -> failure

After the load stops the harness waits for the server to go idle and checks, from /metrics: KV blocks in
use, running and waiting all back to zero; resident memory growth from the first window to the last
under the bound; /health 200 throughout; the canaries again on the idle server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ember.loadgen.bench import WORDS, percentile

FAILURES = ("server_error", "hung", "malformed", "unexpected")
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
YES_NO = 'root ::= "yes" | "no"'
CANARY_PROMPTS = ("The capital of France is", "def fibonacci(n):", "Water boils at")

# Malformed bodies from the robustness tests: each must be a 4xx, never a 5xx or a hang.
BAD_BODIES: tuple[bytes, ...] = (
    b"{",
    b"[]",
    b'{"prompt": "hi"}',
    b'{"model": "M", "prompt": "hi", "unknown_field": 1}',
    b'{"model": "M", "prompt": "hi", "n": 0}',
    b'{"model": "M", "prompt": "hi", "temperature": 5}',
    b'{"model": "M", "prompt": []}',
    b'{"model": "M", "prompt": [[]]}',
    b'{"model": "M", "prompt": "\\ud800"}',
    b'{"model": "M", "prompt": "hi", "logit_bias": {"\\u00b2": 5}}',
    b'{"model": "M", "prompt": "hi", "max_tokens": 1, "max_completion_tokens": 1}',
    b'{"model": "M", "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}',
    b'{"model": "M", "prompt": "hi", "echo": "yes"}',
    b'{"model": "M", "prompt": "hi", "response_format": {"type": "grammar", "grammar": "x ::= x"}}',
    b'{"model": "M", "prompt": [99999999]}',
    b'{"model": "no-such-model", "prompt": "hi"}',
    b'{"model": "M", "prompt": "hi", "max_tokens": 100000000, "context_length_exceeded_behavior": "error"}',
)

KINDS: dict[str, float] = {
    "plain": 10, "stream": 14, "n": 6, "prompt_list": 5, "logprobs_echo": 6, "stop": 6, "json_schema": 5,
    "grammar": 5, "prediction": 5, "session": 10, "long": 2, "bad": 8, "deadline": 3, "canary": 8,
}


@dataclass(frozen=True)
class SoakConfig:
    base_url: str = "http://127.0.0.1:8000"
    model: str = "accounts/fireworks/models/smollm2-135m-instruct"
    clients: int = 16
    duration_s: float = 120.0
    max_tokens: int = 32
    """Typical generation length; kinds vary around it."""
    request_deadline_s: float = 180.0
    """A request with no complete answer by then is hung."""
    disconnect_fraction: float = 0.2
    slow_fraction: float = 0.1
    context_tokens: int = 0
    """The server's context window, for prompts near it; 0 = ask the server (its context error message)."""
    idle_timeout_s: float = 60.0
    max_rss_growth_mb: float = 50.0
    sample_every_s: float = 2.0
    seed: int = 0
    api_key: str | None = None
    server_pid: int | None = None
    """The server's process, for its peak resident memory (VmHWM); None = the process listening on the
    URL's port, when it runs on this machine (any server: ember, llama-server)."""

    def __post_init__(self) -> None:
        if self.clients < 1 or self.duration_s <= 0:
            raise ValueError("clients must be >= 1 and duration positive")
        if not 0 <= self.disconnect_fraction <= 1 or not 0 <= self.slow_fraction <= 1:
            raise ValueError("fractions must be in [0, 1]")


@dataclass
class Record:
    kind: str
    client: int
    outcome: str = "pending"
    status: int | None = None
    detail: str = ""
    started: float = 0.0
    elapsed_s: float = 0.0
    ttft_s: float | None = None
    completion_tokens: int = 0


@dataclass
class Sample:
    t: float
    kv_used: float
    running: float
    waiting: float
    rss_bytes: float
    kv_touched_bytes: float
    health: int


class Malformed(Exception):
    pass


# ------------------------------------------------------------------ requests


@dataclass
class Plan:
    kind: str
    body: dict | None = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    choices: int = 1
    check: str = ""
    expect_text: str | None = None


class Soak:
    def __init__(self, cfg: SoakConfig) -> None:
        self.cfg = cfg
        self.records: list[Record] = []
        self.samples: list[Sample] = []
        self.canary: dict[tuple[str, bool], str] = {}
        self.canary_mismatches: list[str] = []
        self.t0 = 0.0
        self.headers = {"authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self.sessions = [" ".join(random.Random(f"session-{i}").choice(WORDS) for _ in range(300))
                         for i in range(4)]

    # -- building requests -----------------------------------------------------------------------
    def words(self, rng: random.Random, n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    def plan(self, rng: random.Random) -> Plan:
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        mt = max(1, int(self.cfg.max_tokens * rng.uniform(0.25, 1.5)))
        base: dict[str, Any] = {"model": self.cfg.model, "prompt": self.words(rng, rng.randint(4, 60)),
                                "max_tokens": mt, "temperature": rng.choice([0.0, 0.7, 1.0]),
                                "stream": rng.random() < 0.5}
        p = Plan(kind, base)
        if kind == "plain":
            base["stream"] = False
        elif kind == "stream":
            base["stream"] = True
        elif kind == "n":
            base["n"] = p.choices = rng.randint(2, 3)
            base["temperature"] = 0.9
        elif kind == "prompt_list":
            base["prompt"] = [self.words(rng, rng.randint(3, 20)) for _ in range(2)]
            p.choices = 2
        elif kind == "logprobs_echo":
            base.update(logprobs=2, echo=True)
            p.check = "logprobs_echo"
        elif kind == "stop":
            base.update(stop=[".", "\n", " the"], ignore_eos=rng.random() < 0.5)
        elif kind == "json_schema":
            base.update(response_format={"type": "json_schema", "json_schema": PERSON}, max_tokens=48,
                        prompt="A person as JSON: ")
            p.check = "json"
        elif kind == "grammar":
            base.update(response_format={"type": "grammar", "grammar": YES_NO}, max_tokens=4)
            p.check = "yes_no"
        elif kind == "prediction":
            text = self.words(rng, 30)
            base.update(prompt="Repeat: " + text, prediction={"type": "content", "content": text},
                        temperature=0.0)
        elif kind == "session":
            base["prompt"] = rng.choice(self.sessions) + " " + self.words(rng, rng.randint(2, 20))
        elif kind == "long":
            ctx = self.cfg.context_tokens
            if ctx <= 64:
                return self.plan(rng)
            mt = min(mt, 16)
            base.update(prompt=[rng.randrange(300, 5000) for _ in range(ctx - mt - 4)], max_tokens=mt)
        elif kind == "bad":
            raw = rng.choice(BAD_BODIES).replace(b'"M"', json.dumps(self.cfg.model).encode())
            return Plan(kind, raw=raw)
        elif kind == "deadline":
            base.update(max_tokens=2000, ignore_eos=True)
            p.headers["x-request-timeout"] = str(round(rng.uniform(0.2, 1.0), 2))
        elif kind == "canary":
            prompt = rng.choice(CANARY_PROMPTS)
            base.update(prompt=prompt, max_tokens=16, temperature=0.0)
            p.expect_text = self.canary.get((prompt, bool(base["stream"])))
        return p

    # -- one request -----------------------------------------------------------------------------
    async def send(self, http: httpx.AsyncClient, p: Plan, rec: Record, rng: random.Random,
                   disconnector: bool, slow: bool) -> None:
        url = self.cfg.base_url + "/v1/completions"
        headers = self.headers | p.headers
        if p.raw is not None:
            r = await http.post(url, content=p.raw, headers=headers | {"content-type": "application/json"})
            rec.status = r.status_code
            if 400 <= r.status_code < 500 and r.status_code != 408:
                body = r.json()  # a 4xx body must still be the error envelope
                if not isinstance(body.get("error"), dict) or "message" not in body["error"]:
                    raise Malformed(f"4xx without an error envelope: {r.text[:200]}")
                rec.outcome = "rejected"
                return
            self.status_outcome(rec, r)
            if rec.outcome == "ok":
                rec.outcome, rec.detail = "unexpected", f"malformed body answered {r.status_code}"
            return
        assert p.body is not None
        hang_up = disconnector and rng.random() < 0.5
        if p.body.get("stream"):
            await self.stream(http, url, headers, p, rec, rng, hang_up, slow)
            return
        if hang_up:  # give up before the answer: the server must abort the request and free its blocks
            try:
                r = await asyncio.wait_for(http.post(url, json=p.body, headers=headers), rng.uniform(0.01, 0.5))
            except TimeoutError:
                rec.outcome = "disconnected"
                return
        else:
            r = await http.post(url, json=p.body, headers=headers)
        self.status_outcome(rec, r)
        if r.status_code != 200:
            return
        body = r.json()
        texts = self.check_response(body, p)
        rec.completion_tokens = body["usage"]["completion_tokens"]
        self.check_texts(texts, p, rec, [c["finish_reason"] for c in body["choices"]], body)
        rec.outcome = "ok"

    def status_outcome(self, rec: Record, r: httpx.Response) -> None:
        rec.status = r.status_code
        if r.status_code == 200:
            rec.outcome = "ok"
        elif r.status_code == 503 and r.headers.get("retry-after"):
            rec.outcome = "shed"
        elif r.status_code == 408 and rec.kind == "deadline":
            rec.outcome = "deadline"
        elif r.status_code >= 500:
            rec.outcome, rec.detail = "server_error", r.text[:300]
        else:
            rec.outcome, rec.detail = "unexpected", f"{r.status_code}: {r.text[:300]}"

    async def stream(self, http: httpx.AsyncClient, url: str, headers: dict, p: Plan, rec: Record,
                     rng: random.Random, hang_up: bool, slow: bool) -> None:
        assert p.body is not None
        cut_after = rng.randint(1, 8) if hang_up else -1
        texts: dict[int, str] = defaultdict(str)
        finish: dict[int, str] = {}
        usage = None
        done = False
        async with http.stream("POST", url, json=p.body, headers=headers) as r:
            if r.status_code != 200:
                await r.aread()
                self.status_outcome(rec, r)
                return
            n = 0
            async for line in r.aiter_lines():
                if not line:
                    continue
                if not line.startswith("data: "):
                    raise Malformed(f"not an SSE data line: {line[:100]!r}")
                if done:
                    raise Malformed("data after [DONE]")
                if line == "data: [DONE]":
                    done = True
                    continue
                ev = strict_json(line[6:])
                if "error" in ev:
                    err = ev["error"]
                    if err.get("code") == "overloaded":
                        rec.outcome = "shed"
                    elif err.get("code") == "deadline_exceeded" and rec.kind == "deadline":
                        rec.outcome = "deadline"
                    elif err.get("type") == "server_error":
                        rec.outcome, rec.detail = "server_error", json.dumps(err)[:300]
                    else:
                        rec.outcome, rec.detail = "unexpected", json.dumps(err)[:300]
                    continue
                for c in ev.get("choices", []):
                    i = c["index"]
                    if i in finish:
                        raise Malformed(f"choice {i} went on after its finish_reason")
                    texts[i] += c["text"]
                    if c["text"] and rec.ttft_s is None:
                        rec.ttft_s = time.monotonic() - rec.started
                    if c.get("finish_reason"):
                        finish[i] = c["finish_reason"]
                if ev.get("usage"):
                    usage = ev["usage"]
                n += 1
                if n == cut_after:
                    rec.outcome = "disconnected"
                    return  # leaving the block closes the connection mid-stream
                if slow:
                    await asyncio.sleep(rng.uniform(0.05, 0.3))
        if not done:
            raise Malformed("the stream ended without [DONE]")
        if rec.outcome in ("shed", "deadline", "server_error", "unexpected"):
            return
        if sorted(finish) != list(range(p.choices)):
            raise Malformed(f"finish reasons for {sorted(finish)}, expected {p.choices} choices")
        if usage is None:
            raise Malformed("no usage on the final chunk")
        rec.completion_tokens = usage["completion_tokens"]
        self.check_texts([texts[i] for i in range(p.choices)], p, rec, [finish[i] for i in range(p.choices)],
                         None)
        rec.outcome = "ok"

    # -- checking answers ------------------------------------------------------------------------
    def check_response(self, body: dict, p: Plan) -> list[str]:
        if body.get("object") != "text_completion" or not isinstance(body.get("id"), str):
            raise Malformed(f"not a text_completion: {str(body)[:200]}")
        ch = body["choices"]
        if [c["index"] for c in ch] != list(range(p.choices)):
            raise Malformed(f"choice indexes {[c['index'] for c in ch]}, expected {p.choices}")
        u = body["usage"]
        if u["total_tokens"] != u["prompt_tokens"] + u["completion_tokens"] or u["completion_tokens"] < 0:
            raise Malformed(f"usage does not add up: {u}")
        for c in ch:
            if not isinstance(c["text"], str) or c["finish_reason"] not in ("stop", "length"):
                raise Malformed(f"bad choice: {str(c)[:200]}")
        if p.check == "logprobs_echo":
            for c in ch:
                lp = c["logprobs"]
                if not lp or len(lp["tokens"]) != len(lp["token_logprobs"]) or len(lp["tokens"]) == 0:
                    raise Malformed("logprobs missing or uneven")
        return [c["text"] for c in ch]

    def check_texts(self, texts: list[str], p: Plan, rec: Record, finish: list[str], body: dict | None) -> None:
        assert p.body is not None
        for text, fr in zip(texts, finish, strict=True):
            if fr not in ("stop", "length"):
                raise Malformed(f"finish_reason {fr!r}")
            if p.check == "logprobs_echo" and not text.startswith(str(p.body["prompt"])):
                raise Malformed("echo did not start with the prompt")
            if p.check == "json" and fr == "stop":
                try:
                    obj = json.loads(text)
                except ValueError as e:
                    raise Malformed(f"not JSON under json_schema: {text[:100]!r}") from e
                if not isinstance(obj, dict) or set(obj) != {"name", "age"}:
                    raise Malformed(f"JSON outside the schema: {text[:100]}")
            if p.check == "yes_no" and fr == "stop" and text not in ("yes", "no"):
                raise Malformed(f"grammar not obeyed: {text!r}")
            stops = p.body.get("stop") or []
            if any(s in text for s in stops) and not p.body.get("echo"):
                raise Malformed(f"a stop string leaked into the text: {text!r}")
        if p.kind == "canary" and p.expect_text is not None and texts[0] != p.expect_text:
            self.canary_mismatches.append(f"{p.body['prompt']!r} stream={p.body['stream']}: "
                                          f"{p.expect_text!r} -> {texts[0]!r}")

    # -- the run ---------------------------------------------------------------------------------
    async def record_canaries(self, http: httpx.AsyncClient) -> dict[tuple[str, bool], str]:
        """Each canary's greedy text, streamed and not, as the server answers it now (a 503 is retried:
        a server shedding load has not answered the question)."""
        out = {}
        for prompt in CANARY_PROMPTS:
            for stream in (False, True):
                body = {"model": self.cfg.model, "prompt": prompt, "max_tokens": 16, "temperature": 0.0,
                        "stream": stream}
                for attempt in range(20):
                    text = await self.canary_text(http, body)
                    if text is not None:
                        out[(prompt, stream)] = text
                        break
                    await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                else:
                    raise RuntimeError(f"canary {prompt!r} answered 503 twenty times")
        return out

    async def canary_text(self, http: httpx.AsyncClient, body: dict) -> str | None:
        url = self.cfg.base_url + "/v1/completions"
        if not body["stream"]:
            r = await http.post(url, json=body, headers=self.headers)
            if r.status_code == 503:
                return None
            r.raise_for_status()
            return self.check_response(r.json(), Plan("canary", body))[0]
        text = ""
        async with http.stream("POST", url, json=body, headers=self.headers) as r:
            if r.status_code == 503:
                await r.aread()
                return None
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    text += "".join(c["text"] for c in strict_json(line[6:]).get("choices", []))
        return text

    async def probe_context(self, http: httpx.AsyncClient) -> int:
        body = {"model": self.cfg.model, "prompt": [1] * 8, "max_tokens": 10**8,
                "context_length_exceeded_behavior": "error"}
        r = await http.post(self.cfg.base_url + "/v1/completions", json=body, headers=self.headers)
        m = re.search(r"context window of (\d+)", r.text)
        return int(m.group(1)) if m else 0

    async def client(self, http: httpx.AsyncClient, i: int, stop_at: float) -> None:
        rng = random.Random(f"soak-{self.cfg.seed}-{i}")
        disconnector = i < round(self.cfg.clients * self.cfg.disconnect_fraction)
        slow = not disconnector and i < round(self.cfg.clients * (self.cfg.disconnect_fraction +
                                                                   self.cfg.slow_fraction))
        while time.monotonic() < stop_at:
            p = self.plan(rng)
            rec = Record(p.kind, i, started=time.monotonic())
            self.records.append(rec)
            try:
                await asyncio.wait_for(self.send(http, p, rec, rng, disconnector, slow),
                                       self.cfg.request_deadline_s)
            except TimeoutError:
                rec.outcome, rec.detail = "hung", f"no answer in {self.cfg.request_deadline_s} s"
            except Malformed as e:
                rec.outcome, rec.detail = "malformed", str(e)[:300]
            except Exception as e:  # noqa: BLE001 - a dropped connection or an answer of the wrong shape
                rec.outcome, rec.detail = "unexpected", f"{type(e).__name__}: {str(e)[:300]}"
            rec.elapsed_s = time.monotonic() - rec.started
            if rec.outcome == "pending":
                rec.outcome, rec.detail = "unexpected", "the request ended without an outcome"
            if rec.outcome == "shed":
                await asyncio.sleep(rng.uniform(0.5, 1.5))

    async def sample(self, http: httpx.AsyncClient) -> Sample:
        m = (await http.get(self.cfg.base_url + "/metrics")).text
        h = (await http.get(self.cfg.base_url + "/health")).status_code
        return Sample(time.monotonic() - self.t0, gauge(m, "ember_kv_blocks_used"), gauge(m, "ember_requests_running"),
                      gauge(m, "ember_requests_waiting"), gauge(m, "process_resident_memory_bytes"),
                      max(0.0, gauge(m, "ember_kv_cache_touched_bytes")), h)

    async def sampler(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                self.samples.append(await self.sample(http))
            except httpx.HTTPError:
                self.samples.append(Sample(time.monotonic() - self.t0, -1, -1, -1, -1, 0, 0))
            try:
                await asyncio.wait_for(stop.wait(), self.cfg.sample_every_s)
            except TimeoutError:
                pass

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        limits = httpx.Limits(max_connections=cfg.clients * 2 + 8, max_keepalive_connections=cfg.clients + 4)
        timeout = httpx.Timeout(cfg.request_deadline_s, connect=30)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
            await self.wait_ready(http)
            if not cfg.context_tokens:
                self.cfg = cfg = SoakConfig(**(asdict(cfg) | {"context_tokens": await self.probe_context(http)}))
            self.canary = await self.record_canaries(http)
            self.t0 = time.monotonic()
            stop = asyncio.Event()
            sampler = asyncio.create_task(self.sampler(http, stop))
            stop_at = self.t0 + cfg.duration_s
            await asyncio.gather(*(self.client(http, i, stop_at) for i in range(cfg.clients)))
            load_end = time.monotonic() - self.t0
            stop.set()
            await sampler
            idle = await self.wait_idle(http)
            again = await self.record_canaries(http)
        report = self.report(load_end, idle, again)
        report["server_memory"] = server_memory(cfg)
        return report

    async def wait_ready(self, http: httpx.AsyncClient, timeout: float = 300.0) -> None:
        """Wait for a server that is still starting (loading its model) to answer /health 200."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if (await http.get(self.cfg.base_url + "/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.cfg.base_url} did not become healthy in {timeout:.0f} s")
            await asyncio.sleep(0.5)

    async def wait_idle(self, http: httpx.AsyncClient) -> Sample:
        deadline = time.monotonic() + self.cfg.idle_timeout_s
        while True:
            s = await self.sample(http)
            if (s.kv_used == 0 and s.running == 0 and s.waiting == 0) or time.monotonic() > deadline:
                return s
            await asyncio.sleep(0.5)

    # -- the verdict -----------------------------------------------------------------------------
    def report(self, load_end: float, idle: Sample, again: dict[tuple[str, bool], str]) -> dict[str, Any]:
        cfg = self.cfg
        outcomes = Counter(r.outcome for r in self.records)
        by_kind: dict[str, Counter] = defaultdict(Counter)
        for r in self.records:
            by_kind[r.kind][r.outcome] += 1
        ttft = [r.ttft_s for r in self.records if r.ttft_s is not None and r.outcome == "ok"]
        tok_s = [r.completion_tokens / (r.elapsed_s - r.ttft_s) for r in self.records
                 if r.outcome == "ok" and r.ttft_s is not None and r.completion_tokens > 1
                 and r.elapsed_s > r.ttft_s]
        # Resident memory beyond what the KV cache has filled so far: the cache is a lazily-filled memory
        # map that grows to its budget (--kv-cache-mb) by design, so that part of the growth is no leak.
        window = min(60.0, load_end / 3)
        rss = [s for s in self.samples if s.rss_bytes > 0]
        first = [s.rss_bytes - s.kv_touched_bytes for s in rss if s.t <= window]
        last = [s.rss_bytes - s.kv_touched_bytes for s in rss if s.t >= load_end - window]
        growth_mb = (max(last) - max(first)) / 2**20 if first and last else None
        raw_first = [s.rss_bytes for s in rss if s.t <= window]
        raw_last = [s.rss_bytes for s in rss if s.t >= load_end - window]
        idle_drift = [k for k, v in again.items() if self.canary.get(k) != v]
        checks = {
            "no_5xx": outcomes["server_error"] == 0,
            "no_hangs": outcomes["hung"] == 0,
            "all_well_formed": outcomes["malformed"] == 0 and outcomes["unexpected"] == 0,
            "kv_blocks_back_to_zero": idle.kv_used == 0,
            "running_and_waiting_back_to_zero": idle.running == 0 and idle.waiting == 0,
            "rss_growth_under_bound": growth_mb is not None and growth_mb < cfg.max_rss_growth_mb,
            "greedy_unchanged": not self.canary_mismatches and not idle_drift,
            "health_200_throughout": all(s.health == 200 for s in self.samples),
        }
        failures = [asdict(r) for r in self.records if r.outcome in FAILURES][:20]
        return {
            "config": asdict(cfg),
            "passed": all(checks.values()),
            "checks": checks,
            "requests": len(self.records),
            "outcomes": dict(outcomes),
            "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
            "ttft_s": {"p50": percentile(ttft, 50), "p90": percentile(ttft, 90), "p99": percentile(ttft, 99),
                       "max": max(ttft) if ttft else None},
            "tokens_per_s_per_stream": {"p50": percentile(tok_s, 50), "p10": percentile(tok_s, 10)},
            "completion_tokens": sum(r.completion_tokens for r in self.records if r.outcome == "ok"),
            "load_s": round(load_end, 1),
            "rss_mb": {"first_window_max": max(raw_first) / 2**20 if raw_first else None,
                       "last_window_max": max(raw_last) / 2**20 if raw_last else None,
                       "kv_touched_first": max((s.kv_touched_bytes for s in rss if s.t <= window), default=0) / 2**20,
                       "kv_touched_last": max((s.kv_touched_bytes for s in rss), default=0) / 2**20,
                       "growth_beyond_kv": growth_mb, "window_s": round(window, 1)},
            "kv_blocks_used_peak": max((s.kv_used for s in self.samples), default=None),
            "idle": asdict(idle),
            "canary_mismatches": self.canary_mismatches[:10] + [f"idle after soak: {k}" for k in idle_drift],
            "failures": failures,
            "records": [asdict(r) for r in self.records],
        }


def server_memory(cfg: SoakConfig) -> dict[str, Any] | None:
    """The server process's peak and current resident memory (the kernel's VmHWM / VmRSS, MiB): the
    figure to hold against another server's under the same soak. None when it cannot be read (a server on
    another machine, or another user's process)."""
    pid = cfg.server_pid or listening_pid(httpx.URL(cfg.base_url).port or 80)
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        with open(f"/proc/{pid}/comm") as f:
            name = f.read().strip()
    except OSError:
        return None
    kib = {k: int(fields[k].split()[0]) for k in ("VmHWM", "VmRSS") if k in fields}
    return {"pid": pid, "process": name, "peak_rss_mb": kib.get("VmHWM", 0) / 1024,
            "rss_mb": kib.get("VmRSS", 0) / 1024}


def listening_pid(port: int) -> int | None:
    """The process of this machine holding a socket that listens on `port` (/proc/net/tcp{,6}: state 0A)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
            except OSError:
                continue
    return None


def strict_json(text: str) -> dict:
    def refuse(name: str) -> None:
        raise Malformed(f"non-standard JSON constant {name}")

    try:
        obj = json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError as e:
        raise Malformed(f"not JSON: {text[:100]!r}") from e
    if not isinstance(obj, dict):
        raise Malformed(f"not a JSON object: {text[:100]!r}")
    return obj


def gauge(metrics: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", metrics, re.M)
    return float(m.group(1)) if m else -1.0


def format_report(r: dict[str, Any]) -> str:
    lines = [f"soak: {'PASSED' if r['passed'] else 'FAILED'}  {r['requests']} requests in {r['load_s']} s "
             f"from {r['config']['clients']} clients"]
    lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items())))
    t = r["ttft_s"]
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    lines.append(f"TTFT s (streams answered): p50 {fmt(t['p50'])} p90 {fmt(t['p90'])} p99 {fmt(t['p99'])} "
                 f"max {fmt(t['max'])}; tok/s per stream p50 {fmt(r['tokens_per_s_per_stream']['p50'])}")
    m = r["rss_mb"]
    lines.append(f"RSS MB: first {m['window_s']} s max {fmt(m['first_window_max'])}, last max "
                 f"{fmt(m['last_window_max'])} (KV cache filled {fmt(m['kv_touched_first'])} -> "
                 f"{fmt(m['kv_touched_last'])}), growth beyond the KV cache {fmt(m['growth_beyond_kv'])}; "
                 f"KV blocks peak {r['kv_blocks_used_peak']}, at idle {r['idle']['kv_used']}")
    mem = r.get("server_memory")
    if mem:
        lines.append(f"server process {mem['pid']} ({mem['process']}): peak RSS {mem['peak_rss_mb']:.1f} MB "
                     f"(VmHWM, since it started), now {mem['rss_mb']:.1f} MB")
    for k, ok in r["checks"].items():
        lines.append(f"  [{'ok' if ok else 'FAIL'}] {k}")
    for f in r["failures"][:5]:
        lines.append(f"  failure: {f['kind']} {f['outcome']} {f['status']} {f['detail'][:160]}")
    for c in r["canary_mismatches"][:5]:
        lines.append(f"  canary changed: {c}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    d = SoakConfig()
    p = argparse.ArgumentParser(prog="ember soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=d.base_url, help="the server's base URL (only 127.0.0.1 unless you own it)")
    p.add_argument("--model", default=d.model)
    p.add_argument("--clients", type=int, default=d.clients)
    p.add_argument("--duration", type=float, default=d.duration_s, help="seconds of load")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens)
    p.add_argument("--request-deadline", type=float, default=d.request_deadline_s,
                   help="seconds after which a request without an answer counts as hung")
    p.add_argument("--disconnect-fraction", type=float, default=d.disconnect_fraction)
    p.add_argument("--slow-fraction", type=float, default=d.slow_fraction)
    p.add_argument("--context-tokens", type=int, default=0, help="context window (default: ask the server)")
    p.add_argument("--max-rss-growth-mb", type=float, default=d.max_rss_growth_mb)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key", default=None)
    p.add_argument("--server-pid", type=int, default=None,
                   help="the server's process for its peak RSS (default: whichever listens on the URL's port)")
    p.add_argument("--json", default=None, help="write the full report here")
    return p


def soak_main(argv: list[str] | None = None) -> int:
    """CLI entry: 0 when every check passed, 1 otherwise, 2 on bad arguments."""
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        cfg = SoakConfig(base_url=a.url.rstrip("/"), model=a.model, clients=a.clients, duration_s=a.duration,
                         max_tokens=a.max_tokens, request_deadline_s=a.request_deadline,
                         disconnect_fraction=a.disconnect_fraction, slow_fraction=a.slow_fraction,
                         context_tokens=a.context_tokens, max_rss_growth_mb=a.max_rss_growth_mb, seed=a.seed,
                         api_key=a.api_key, server_pid=a.server_pid)
    except ValueError as e:
        parser.error(str(e))
    report = asyncio.run(Soak(cfg).run())
    print(format_report(report))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(soak_main())
