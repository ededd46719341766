"""`ember bench`: a closed-loop load generator for any OpenAI-compatible `POST /v1/completions`.

It speaks only the public wire protocol, so the same run can be pointed at ember or at a peer such as
llama.cpp's llama-server and the numbers compare like for like. Prompts come from a fixed word list
and a seeded RNG: every server sees byte-identical prompts for the same config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

# Common English words that are each a single token (with their leading space) in the usual byte-level
# BPE vocabularies (checked against SmolLM2 through llama-server's /tokenize: 130, 512 and 900-word prompts
# are exactly that many tokens); "N words = N tokens" is what lets --prompt-tokens mean tokens
# without a tokenizer on the client side.
WORDS: tuple[str, ...] = (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on",
    "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they",
    "you", "were", "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more",
    "when", "will", "would", "who", "so", "no", "she", "other", "its", "may", "these", "about", "into",
    "than", "time", "only", "some", "could", "them", "first", "two", "then", "new", "like", "people",
    "over", "also", "after", "most", "made", "such", "many", "any", "well", "work", "even", "back",
    "state", "water", "under", "life", "world", "year", "day", "long", "great", "house", "small",
    "city", "school", "group", "number", "part", "place", "case", "point", "government", "company",
    "system", "program", "question", "night", "home", "room", "money", "story", "fact", "month", "lot",
    "right", "study", "book", "eye", "job", "word", "business", "issue", "side", "kind", "head",
    "service", "friend", "father", "power", "hour", "game", "line", "end", "member", "law", "car",
    "name", "president", "team", "minute", "idea", "body", "information", "face", "others", "level",
    "office", "door", "health", "person", "art", "war", "history", "party", "result", "change",
    "morning", "reason", "research", "girl", "guy", "moment", "air", "teacher", "force", "education",
    "food", "river", "music", "light", "table", "green", "road", "field", "market", "country", "window",
    "paper", "garden", "bread", "horse", "tree", "stone", "ocean", "winter", "summer", "village",
)


@dataclass(frozen=True)
class BenchConfig:
    """One closed-loop run: `concurrency` clients keep one request each in flight until all are done."""

    base_url: str = "http://127.0.0.1:8000"
    model: str = "smollm2-135m-instruct"
    concurrency: int = 1
    num_requests: int = 8
    prompt_tokens: int = 128  # approximate: one word of WORDS per token
    max_tokens: int = 128
    ignore_eos: bool = True  # fixed-length outputs, so runs on different servers do equal work
    temperature: float = 0.0
    stream: bool = True
    shared_prefix_tokens: int = 0  # leading words common to every prompt (prefix-cache scenarios)
    timeout_s: float = 600.0
    seed: int = 0
    api_key: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.num_requests < 1:
            raise ValueError("concurrency and num_requests must be >= 1")
        if self.prompt_tokens < 1 or self.max_tokens < 1:
            raise ValueError("prompt_tokens and max_tokens must be >= 1")
        if not 0 <= self.shared_prefix_tokens <= self.prompt_tokens:
            raise ValueError("shared_prefix_tokens must be between 0 and prompt_tokens")


@dataclass
class RequestResult:
    """What one request measured; times are seconds from the moment it was sent."""

    index: int
    ok: bool = False
    error: str | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    num_chunks: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    text: str = ""

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("itl_s")  # per-token gaps are aggregated; keeping them all would bloat the JSON
        d["text_chars"] = len(d.pop("text"))
        return d


# ------------------------------------------------------------------ prompts


def make_words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_prompts(cfg: BenchConfig) -> list[str]:
    """Deterministic prompts for cfg: same config, same prompts, whichever server is measured.

    The prefix RNG is separate from the per-prompt RNG so that changing num_requests does not change the
    shared prefix, and vice versa.
    """
    prefix = make_words(random.Random(f"prefix-{cfg.seed}"), cfg.shared_prefix_tokens)
    rng = random.Random(f"prompts-{cfg.seed}")
    unique = cfg.prompt_tokens - cfg.shared_prefix_tokens
    prompts = []
    for _ in range(cfg.num_requests):
        body = make_words(rng, unique)
        prompts.append(" ".join(p for p in (prefix, body) if p))
    return prompts


# ------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no data rather than a fake 0."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def distribution(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "mean": sum(values) / len(values) if values else None,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "n": len(values),
    }


# ------------------------------------------------------------------ one request


def completions_url(base_url: str) -> str:
    # Accept both "http://host:port" and "http://host:port/v1", the two ways people write base URLs.
    base = base_url.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base + "/v1/completions"


def request_body(cfg: BenchConfig, prompt: str) -> dict[str, Any]:
    return {
        "model": cfg.model,
        "prompt": prompt,
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
        "ignore_eos": cfg.ignore_eos,
        "stream": cfg.stream,
    }


def _take_usage(res: RequestResult, obj: dict[str, Any]) -> None:
    """Token counts from `usage` (OpenAI/ember) or `timings` (llama-server), whichever the server sent."""
    usage = obj.get("usage")
    if isinstance(usage, dict):
        if isinstance(usage.get("completion_tokens"), int):
            res.completion_tokens = usage["completion_tokens"]
        if isinstance(usage.get("prompt_tokens"), int):
            res.prompt_tokens = usage["prompt_tokens"]
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            res.cached_tokens = details["cached_tokens"]
    timings = obj.get("timings")
    if isinstance(timings, dict):
        # llama-server: prompt_n counts only the prompt tokens it had to compute, cache_n the reused ones.
        if res.completion_tokens is None and isinstance(timings.get("predicted_n"), int):
            res.completion_tokens = timings["predicted_n"]
        cache_n = timings.get("cache_n")
        if res.cached_tokens is None and isinstance(cache_n, int):
            res.cached_tokens = cache_n
        if res.prompt_tokens is None and isinstance(timings.get("prompt_n"), int):
            res.prompt_tokens = timings["prompt_n"] + (cache_n if isinstance(cache_n, int) else 0)


def _error_text(obj: Any) -> str:
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:200]
        return str(err)[:200]
    return str(obj)[:200]


async def send_request(client: httpx.AsyncClient, cfg: BenchConfig, prompt: str, index: int = 0) -> RequestResult:
    """Send one completion and time it; never raises for server or network trouble, it reports it."""
    res = RequestResult(index=index)
    url = completions_url(cfg.base_url)
    body = request_body(cfg, prompt)
    t0 = time.perf_counter()
    try:
        if cfg.stream:
            await _stream(client, url, body, res, t0)
        else:
            resp = await client.post(url, json=body)
            res.e2e_s = time.perf_counter() - t0
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {_error_text(_json_or_text(resp.text))}"
                return res
            obj = resp.json()
            res.ttft_s = res.e2e_s
            choices = obj.get("choices") or []
            res.text = "".join(str(c.get("text") or "") for c in choices)
            res.num_chunks = 1
            _take_usage(res, obj)
            res.ok = True
    except httpx.TimeoutException:
        res.error = "timeout"
    except httpx.HTTPError as e:
        res.error = f"{type(e).__name__}: {e}"[:200]
    except (ValueError, KeyError, TypeError) as e:  # malformed JSON from the server
        res.error = f"bad response: {type(e).__name__}: {e}"[:200]
    if res.e2e_s is None:
        res.e2e_s = time.perf_counter() - t0
    if res.ok and res.completion_tokens is None:
        res.completion_tokens = res.num_chunks  # the brief's rule: one chunk ~= one token
    return res


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _stream(client: httpx.AsyncClient, url: str, body: dict[str, Any], res: RequestResult, t0: float) -> None:
    last: float | None = None
    first_any: float | None = None
    done = False
    async with client.stream("POST", url, json=body) as resp:
        if resp.status_code != 200:
            raw = (await resp.aread()).decode("utf-8", "replace")
            res.error = f"HTTP {resp.status_code}: {_error_text(_json_or_text(raw))}"
            return
        async for line in resp.aiter_lines():
            if line.startswith("error:"):  # llama-server's own SSE error event
                res.error = f"stream error: {_error_text(_json_or_text(line[6:].strip()))}"
                return
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            now = time.perf_counter()
            obj = json.loads(data)
            if isinstance(obj, dict) and "error" in obj and not obj.get("choices"):
                res.error = f"stream error: {_error_text(obj)}"
                return
            _take_usage(res, obj)
            choices = obj.get("choices") or []
            if not choices:
                continue  # a usage-only chunk carries no token
            text = "".join(str(c.get("text") or "") for c in choices)
            if not text and all(c.get("finish_reason") for c in choices):
                continue  # a closing "finish_reason only" chunk (llama-server sends one) is not a token
            res.num_chunks += 1
            res.text += text
            if first_any is None:
                first_any = now
            # TTFT counts from the first chunk with visible text, so a server that sends an empty
            # "stream opened" chunk right away does not look faster than it is.
            if res.ttft_s is None and text:
                res.ttft_s = now - t0
            if last is not None:
                res.itl_s.append(now - last)
            last = now
    res.e2e_s = time.perf_counter() - t0
    if res.ttft_s is None and first_any is not None:
        res.ttft_s = first_any - t0  # every token decoded to empty text; still a first token
    if not done:
        res.error = "stream ended without [DONE]"
        return
    if res.num_chunks == 0:
        res.error = "stream carried no tokens"
        return
    res.ok = True


# ------------------------------------------------------------------ the run


def aggregate(cfg: BenchConfig, results: list[RequestResult], wall_s: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    completion = sum(r.completion_tokens or 0 for r in ok)
    prompt = sum(r.prompt_tokens or 0 for r in ok)
    cached = [r.cached_tokens for r in ok if r.cached_tokens is not None]
    itl = [x for r in ok for x in r.itl_s]
    # Per-request decode speed excludes the first token, which prefill dominates.
    decode = [
        (r.completion_tokens - 1) / (r.e2e_s - r.ttft_s)
        for r in ok
        if r.completion_tokens and r.completion_tokens > 1 and r.e2e_s and r.ttft_s is not None
        and r.e2e_s > r.ttft_s
    ]
    wall = max(wall_s, 1e-9)
    return {
        "config": asdict(cfg) | {"api_key": "***" if cfg.api_key else None},
        "num_requests": len(results),
        "completed": len(ok),
        "failed": len(failed),
        "errors": dict(Counter(r.error or "unknown" for r in failed).most_common(10)),
        "wall_s": wall_s,
        "completion_tokens_total": completion,
        "prompt_tokens_total": prompt,
        # None, not 0, when the server never said: "no cache hits" and "not reported" differ.
        "cached_tokens_total": sum(cached) if cached else None,
        "gen_tok_s": completion / wall,
        "prompt_tok_s": prompt / wall,
        "req_s": len(ok) / wall,
        "ttft_s": distribution([r.ttft_s for r in ok if r.ttft_s is not None]),
        "itl_s": distribution(itl),
        "e2e_s": distribution([r.e2e_s for r in ok if r.e2e_s is not None]),
        "decode_tok_s_per_request": distribution(decode),
        "requests": [r.summary() for r in results],
    }


def make_client(cfg: BenchConfig) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    # One connection per worker: a smaller pool would queue requests client-side and hide server
    # latency inside our own wait.
    limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
    timeout = httpx.Timeout(cfg.timeout_s, connect=min(cfg.timeout_s, 30.0))
    return httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout, trust_env=False)


async def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run cfg's closed loop and return aggregate figures plus a per-request summary."""
    prompts = make_prompts(cfg)
    results: list[RequestResult | None] = [None] * cfg.num_requests
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(cfg.num_requests):
        queue.put_nowait(i)
    bar = tqdm(total=cfg.num_requests, file=sys.stderr, disable=not cfg.progress, desc="requests",
               unit="req", leave=False)

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            r = await send_request(client, cfg, prompts[i], i)
            results[i] = r
            bar.update(1)
            if not r.ok:
                bar.set_postfix(failed=sum(1 for x in results if x is not None and not x.ok))

    try:
        async with make_client(cfg) as client:
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(client) for _ in range(min(cfg.concurrency, cfg.num_requests))))
            wall = time.perf_counter() - t0
    finally:
        bar.close()
    return aggregate(cfg, [r for r in results if r is not None], wall)


# ------------------------------------------------------------------ CLI


def _fmt(v: float | None, unit: str = "", scale: float = 1.0, digits: int = 3) -> str:
    return "-" if v is None else f"{v * scale:.{digits}f}{unit}"


def format_table(result: dict[str, Any]) -> str:
    cfg = result["config"]
    ttft, itl, e2e = result["ttft_s"], result["itl_s"], result["e2e_s"]
    rows = [
        ("server", cfg["base_url"]),
        ("concurrency / requests", f"{cfg['concurrency']} / {result['num_requests']}"),
        ("prompt ~tokens / max_tokens", f"{cfg['prompt_tokens']} / {cfg['max_tokens']}"),
        ("completed / failed", f"{result['completed']} / {result['failed']}"),
        ("wall time", _fmt(result["wall_s"], " s", digits=2)),
        ("generated tok/s", _fmt(result["gen_tok_s"], digits=1)),
        ("prompt tok/s", _fmt(result["prompt_tok_s"], digits=1)),
        ("TTFT p50 / p95 / p99", " / ".join(_fmt(ttft[k], " s") for k in ("p50", "p95", "p99"))),
        ("ITL p50 / p95 / p99", " / ".join(_fmt(itl[k], " ms", 1000, 1) for k in ("p50", "p95", "p99"))),
        ("E2E p50 / p95", " / ".join(_fmt(e2e[k], " s", digits=2) for k in ("p50", "p95"))),
        ("cached prompt tokens", "-" if result["cached_tokens_total"] is None else str(result["cached_tokens_total"])),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    for err, n in result["errors"].items():
        lines.append(f"{'error'.ljust(width)}  {n} x {err}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    d = BenchConfig()
    p = argparse.ArgumentParser(prog="ember bench",
                                description="Closed-loop load test of an OpenAI-compatible POST /v1/completions.")
    p.add_argument("--url", default=d.base_url, help="server base URL (with or without /v1)")
    p.add_argument("--model", default=d.model, help="model name sent in each request")
    p.add_argument("--api-key", default=None, help="sent as a Bearer token")
    p.add_argument("--concurrency", "-c", type=int, default=d.concurrency, help="requests kept in flight")
    p.add_argument("--requests", "-n", type=int, default=d.num_requests, help="total requests")
    p.add_argument("--prompt-tokens", type=int, default=d.prompt_tokens, help="approximate prompt length")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help="tokens to generate per request")
    p.add_argument("--shared-prefix-tokens", type=int, default=d.shared_prefix_tokens,
                   help="length of a prefix common to all prompts (exercises prefix caching)")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--no-ignore-eos", action="store_true", help="let requests stop at end-of-sequence")
    p.add_argument("--no-stream", action="store_true", help="non-streaming requests (TTFT = end-to-end)")
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="per-request timeout, seconds")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the prompt generator")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the full result as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(a: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        base_url=a.url, model=a.model, concurrency=a.concurrency, num_requests=a.requests,
        prompt_tokens=a.prompt_tokens, max_tokens=a.max_tokens, ignore_eos=not a.no_ignore_eos,
        temperature=a.temperature, stream=not a.no_stream, shared_prefix_tokens=a.shared_prefix_tokens,
        timeout_s=a.timeout, seed=a.seed, api_key=a.api_key, progress=not a.no_progress,
    )


def bench_main(argv: list[str] | None = None) -> int:
    """CLI entry: 0 when every request succeeded, 1 when some failed, 2 on bad arguments."""
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        cfg = config_from_args(a)
    except ValueError as e:
        parser.error(str(e))  # exits with status 2
    try:
        result = asyncio.run(run_bench(cfg))
    except KeyboardInterrupt:
        return 130
    print(format_table(result))
    if a.json:
        path = Path(a.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(bench_main())
