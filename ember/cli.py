"""`ember serve | complete | bench`: parse flags -> Config -> run. Nothing else lives here."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from ember.cli_admin import add_admin_commands, add_store_flags, run_admin, store_config
from ember.cli_audit import add_audit_command, run_audit
from ember.cli_jobs import add_jobs_commands, run_jobs
from ember.config import (
    AUTH_MODES,
    KV_CACHE_DTYPES,
    QUANTIZATIONS,
    BatchConfig,
    CacheConfig,
    ClusterConfig,
    Config,
    ModelConfig,
    PlatformConfig,
    SchedulerConfig,
    ServerConfig,
    SpeculativeConfig,
    StoreConfig,
)
from ember.errors import EmberError

# Before torch (and its libgomp) loads: OpenMP workers spin this long for the next parallel region
# before sleeping. The default here is short enough that a decode step's ~400 small parallel regions
# each pay a futex wake-up: 15.9 ms per token at batch 1 against 14.3 ms with this setting, and an
# idle server still drops to 0% CPU within milliseconds. OMP_WAIT_POLICY=ACTIVE would spin forever.
os.environ.setdefault("GOMP_SPINCOUNT", "3000000")


def _add_engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="a .gguf file, a Hugging Face checkpoint dir, or a short name "
                        "(default: the embedded smollm2-135m-instruct)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--quantization", default="auto", choices=list(QUANTIZATIONS),
                   help="weight-only quantization: auto keeps each weight at its file's precision")
    p.add_argument("--max-model-len", type=int, default=None, help="context window (default: the model's)")
    p.add_argument("--kv-cache-mb", type=int, default=CacheConfig.kv_cache_mb,
                   help="memory budget of the KV cache (default %(default)s MiB)")
    p.add_argument("--kv-cache-dtype", default=CacheConfig.kv_cache_dtype, choices=list(KV_CACHE_DTYPES),
                   help="how K and V are stored (float16: half the memory per token; default %(default)s)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    p.add_argument("--no-prefix-caching", action="store_true", help="disable prefix caching")
    p.add_argument("--no-native-kernels", action="store_true",
                   help="run attention and the per-layer steps on torch ops instead of the compiled kernels")
    p.add_argument("--max-num-seqs", type=int, default=64, help="most sequences in one batch")
    p.add_argument("--max-num-batched-tokens", type=int, default=512, help="per-step token budget")
    p.add_argument("--long-prefill-tokens", type=int, default=SchedulerConfig.long_prefill_tokens,
                   help="while other work is in a step, prompts longer than the step budget together "
                        "take at most this many of its tokens")
    p.add_argument("--max-prefill-backlog", type=float, default=SchedulerConfig.max_prefill_backlog_s,
                   help="seconds of long-prompt prefill (the ones ahead plus its own, at the measured rate) "
                        "past which a new long prompt gets 503")
    p.add_argument("--speculative-ngram", action="store_true",
                   help="prompt-lookup speculative decoding for requests without a prediction")
    p.add_argument("--num-draft-tokens", type=int, default=SpeculativeConfig.num_draft_tokens, help="most draft tokens verified per step")


def _config(a: argparse.Namespace) -> Config:
    return Config(
        model=ModelConfig(model=a.model, device=a.device, quantization=a.quantization,
                          max_model_len=a.max_model_len, native_kernels=not a.no_native_kernels),
        cache=CacheConfig(block_size=a.block_size, kv_cache_mb=a.kv_cache_mb, kv_cache_dtype=a.kv_cache_dtype,
                          enable_prefix_caching=not a.no_prefix_caching),
        scheduler=SchedulerConfig(max_num_seqs=a.max_num_seqs, max_num_batched_tokens=a.max_num_batched_tokens,
                                  long_prefill_tokens=a.long_prefill_tokens,
                                  max_prefill_backlog_s=a.max_prefill_backlog),
        server=ServerConfig(host=getattr(a, "host", "127.0.0.1"), port=getattr(a, "port", 8000),
                            api_keys=tuple(getattr(a, "api_key", None) or ()),
                            drain_timeout_s=getattr(a, "drain_timeout", ServerConfig.drain_timeout_s),
                            stall_timeout_s=getattr(a, "health_stall_timeout", ServerConfig.stall_timeout_s),
                            max_request_timeout_s=getattr(a, "max_request_timeout", None),
                            keep_alive_timeout_s=getattr(a, "keep_alive_timeout", ServerConfig.keep_alive_timeout_s),
                            public_url=getattr(a, "public_url", None),
                            max_header_kb=getattr(a, "max_header_kb", ServerConfig.max_header_kb),
                            max_body_mb=getattr(a, "max_body_mb", ServerConfig.max_body_mb)),
        speculative=SpeculativeConfig(ngram_lookup=a.speculative_ngram, num_draft_tokens=a.num_draft_tokens),
        store=store_config(a) if hasattr(a, "data_dir") else StoreConfig(),
        platform=PlatformConfig(auth=getattr(a, "auth", "auto"),
                                allow_unauthenticated=getattr(a, "allow_unauthenticated", False),
                                max_queued_requests=getattr(a, "max_queued_requests", 1024),
                                max_keys_per_account=getattr(a, "max_keys_per_account",
                                                             PlatformConfig.max_keys_per_account)),
        batch=BatchConfig(max_upload_mb=getattr(a, "max_upload_mb", BatchConfig.max_upload_mb),
                          max_active_jobs_per_account=getattr(a, "max_active_jobs_per_account",
                                                              BatchConfig.max_active_jobs_per_account),
                          max_datasets_per_account=getattr(a, "max_datasets_per_account",
                                                           BatchConfig.max_datasets_per_account)),
    )


def _cluster_config(a: argparse.Namespace) -> ClusterConfig:
    return ClusterConfig(replicas=a.replicas, address=a.address, threads_per_replica=a.threads_per_replica,
                         pin_threads=not a.no_pin_threads, max_ongoing_requests=a.max_ongoing_requests,
                         fallback_replicas=a.fallback_replicas)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def refuse_open_exposure(config: Config) -> None:
    """Serving open (no key needed) is only for this machine unless the operator says otherwise."""
    host = config.server.host
    if host in LOOPBACK or host.startswith("127.") or config.platform.allow_unauthenticated:
        return
    if config.server.api_keys or config.platform.auth == "keys":
        return
    if config.platform.auth == "auto":
        from ember.store.accounts import Accounts
        from ember.store.db import open_store

        store = open_store(config.store)
        try:
            if Accounts(store).count() > 0:
                return
        finally:
            store.close()
    raise ValueError(f"refusing to serve without API keys on {host}: create an account first "
                     "(`ember accounts create ID --email E`), pass --auth keys, or --allow-unauthenticated")


def serve(a: argparse.Namespace) -> int:
    from ember.app import create_app
    from ember.engine.client import TorchThread
    from ember.model.loader import load_model
    from ember.server import run_server

    config = _config(a)
    refuse_open_exposure(config)
    cluster = _cluster_config(a)
    if cluster.uses_ray:  # only here is Ray imported: one replica without --address stays one process
        from ember.serve.deployment import run_cluster

        return run_cluster(config, cluster)
    print(f"ember: loading {config.model.model or 'the default model'} ...", file=sys.stderr)
    torch_thread = TorchThread()  # loads here and steps later: one thread for all torch work
    loaded = torch_thread.submit(load_model, config.model).result()
    print(f"ember: serving {loaded.ref.model_id} on http://{config.server.host}:{config.server.port}/v1",
          file=sys.stderr)
    app = create_app(config, loaded, torch_thread)
    return run_server(app, config.server, a.log_level)


def complete(a: argparse.Namespace) -> int:
    from ember.engine.client import EngineClient
    from ember.engine.engine import Engine
    from ember.engine.request import EngineRequest, SamplingParams
    from ember.model.loader import load_model

    config = _config(a)
    loaded = load_model(config.model)
    client = EngineClient(Engine(loaded, config))
    client.start()
    params = SamplingParams(max_tokens=a.max_tokens, temperature=a.temperature, top_p=a.top_p, seed=a.seed)
    req = EngineRequest("cli-0", tuple(loaded.tokenizer.encode(a.prompt)), params)

    async def run() -> None:
        last = None
        async for out in client.generate(req):
            sys.stdout.write(out.new_text)
            sys.stdout.flush()
            last = out
        sys.stdout.write("\n")
        if a.stats and last is not None:  # each output carries the request's totals so far
            print(f"ember: {last.num_prompt_tokens} prompt tokens, {last.num_output_tokens} generated, "
                  f"{last.num_draft_tokens} draft tokens proposed, {last.num_accepted_draft_tokens} accepted",
                  file=sys.stderr)

    try:
        asyncio.run(run())
    finally:
        client.stop()
    return 0


def _add_cluster_parser(sub: argparse._SubParsersAction) -> None:
    from ember.serve.nodes import add_cluster_commands  # no Ray import: `ray start` runs as a command

    add_cluster_commands(sub)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from ember.bench import bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["soak"]:
        from ember.soak import soak_main

        return soak_main(argv[1:])
    parser = argparse.ArgumentParser(prog="ember", description="A Fireworks-compatible completion server.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve POST /v1/completions over HTTP")
    _add_engine_flags(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", action="append",
                   help="a static Bearer key for account 'local' (repeatable); keys from the store work too")
    s.add_argument("--auth", default="auto", choices=list(AUTH_MODES),
                   help="auto: keys required once an account exists; keys: always; none: never")
    s.add_argument("--allow-unauthenticated", action="store_true",
                   help="allow serving without keys on a non-loopback address")
    s.add_argument("--max-queued-requests", type=int, default=PlatformConfig.max_queued_requests,
                   help="waiting sequences past which new requests get 503 (priority tier: twice)")
    add_store_flags(s)
    s.add_argument("--max-upload-mb", type=int, default=BatchConfig.max_upload_mb,
                   help="largest dataset file :upload accepts (413 past it)")
    s.add_argument("--max-active-jobs-per-account", type=int, default=BatchConfig.max_active_jobs_per_account,
                   help="unfinished batch jobs an account may have; one more gets 429 resource_exhausted")
    s.add_argument("--max-datasets-per-account", type=int, default=BatchConfig.max_datasets_per_account,
                   help="datasets (and OpenAI files) an account may hold, job outputs aside; one more gets 429")
    s.add_argument("--max-keys-per-account", type=int, default=PlatformConfig.max_keys_per_account,
                   help="live API keys an account may hold; the Gateway refuses one more (429)")
    s.add_argument("--log-level", default="info")
    s.add_argument("--drain-timeout", type=float, default=ServerConfig.drain_timeout_s,
                   help="seconds requests in flight may run on after SIGTERM/SIGINT; a second signal exits at once")
    s.add_argument("--health-stall-timeout", type=float, default=ServerConfig.stall_timeout_s,
                   help="/health answers 503 when the engine has not stepped for this long with work pending")
    s.add_argument("--max-request-timeout", type=float, default=None,
                   help="cap on a request's total time in seconds (clients may ask for less: x-request-timeout)")
    s.add_argument("--keep-alive-timeout", type=float, default=ServerConfig.keep_alive_timeout_s,
                   help="seconds an idle keep-alive connection stays open (longer than clients' pool expiry)")
    s.add_argument("--public-url", default=None,
                   help="the base URL clients reach this server at (e.g. https://ember.example.com): the host "
                        "of download URLs, and a Host an open server answers to (default: the socket's address)")
    s.add_argument("--max-header-kb", type=int, default=ServerConfig.max_header_kb,
                   help="largest request line + headers in KiB (431 past it)")
    s.add_argument("--max-body-mb", type=float, default=ServerConfig.max_body_mb,
                   help="largest request body in MiB on every path but uploads (413 past it)")
    s.add_argument("--replicas", type=int, default=1,
                   help="engine replicas on Ray Serve behind one endpoint (needs ember[cluster]); 1: no Ray")
    s.add_argument("--address", default=None,
                   help="an existing Ray cluster's HOST:PORT (see `ember cluster up`); default: a local Ray")
    s.add_argument("--threads-per-replica", type=int, default=ClusterConfig.threads_per_replica,
                   help="torch threads and Ray CPUs of each replica")
    s.add_argument("--no-pin-threads", action="store_true", help="do not pin replicas' threads to cores")
    s.add_argument("--max-ongoing-requests", type=int, default=None,
                   help="requests per replica before keyed requests spill to the next (default: --max-num-seqs)")
    s.add_argument("--fallback-replicas", type=int, default=ClusterConfig.fallback_replicas,
                   help="replicas a saturated owner's keyed requests may spill to")
    c = sub.add_parser("complete", help="stream one completion to the terminal")
    _add_engine_flags(c)
    c.add_argument("prompt")
    c.add_argument("--max-tokens", type=int, default=64)
    c.add_argument("--temperature", type=float, default=0.0)
    c.add_argument("--top-p", type=float, default=1.0)
    c.add_argument("--seed", type=int, default=None)
    c.add_argument("--stats", action="store_true",
                   help="after the text, one line on stderr: tokens in and out, draft tokens proposed and accepted")
    sub.add_parser("bench", help="load-test an OpenAI-compatible server (see `ember bench --help`)")
    add_admin_commands(sub)
    add_jobs_commands(sub)
    add_audit_command(sub)
    _add_cluster_parser(sub)
    sub.add_parser("soak", help="abuse a live server for a while, then check nothing leaked (`ember soak --help`)")
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if a.cmd in ("accounts", "users", "keys", "usage", "secrets"):
            return run_admin(a)
        if a.cmd == "jobs":
            return run_jobs(a)
        if a.cmd == "audit":
            return run_audit(a)
        if a.cmd == "cluster":
            from ember.serve.nodes import run_cluster_command

            return run_cluster_command(a)
        return serve(a) if a.cmd == "serve" else complete(a)
    except EmberError as e:
        print(f"ember: error: {e.message}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        print(f"ember: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
