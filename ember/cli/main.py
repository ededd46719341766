"""`ember serve | complete | bench`: parse flags -> Config -> run. Nothing else lives here."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import typing

from ember.cli.admin import add_admin_commands, run_admin
from ember.cli.audit import add_audit_command, run_audit
from ember.cli.flags import add_config_flags, config_from_args
from ember.cli.jobs import add_jobs_commands, run_jobs
from ember.config import (
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


ENGINE_CONFIGS = (ModelConfig, CacheConfig, SchedulerConfig, SpeculativeConfig)
"""The sections whose flags both `ember serve` and `ember complete` take."""
SERVE_CONFIGS = (ServerConfig, PlatformConfig, StoreConfig, BatchConfig, ClusterConfig)
"""The sections whose flags only `ember serve` takes."""


def _config(a: argparse.Namespace) -> Config:
    hints = typing.get_type_hints(Config)
    return Config(**{f.name: config_from_args(hints[f.name], a) for f in dataclasses.fields(Config)})


def _cluster_config(a: argparse.Namespace) -> ClusterConfig:
    return config_from_args(ClusterConfig, a)


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
    from ember.http.uvicorn_server import inherited_socket, run_server
    from ember.model.loader import load_model

    config = _config(a)
    cluster = _cluster_config(a)
    sock = None
    if config.server.fd is not None:
        if cluster.uses_ray:
            raise ValueError("--fd serves one process's socket; Ray Serve's proxies bind --port themselves")
        sock = inherited_socket(config.server.fd)
        # The socket's own address decides exposure, the Host check and what is printed, not --host.
        host, port = sock.getsockname()[:2]
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, host=host, port=port))
    refuse_open_exposure(config)
    if cluster.uses_ray:  # only here is Ray imported: one replica without --address stays one process
        from ember.cluster.deployment import run_cluster

        return run_cluster(config, cluster)
    print(f"ember: loading {config.model.model or 'the default model'} ...", file=sys.stderr)
    torch_thread = TorchThread()  # loads here and steps later: one thread for all torch work
    loaded = torch_thread.submit(load_model, config.model).result()
    print(f"ember: serving {loaded.ref.model_id} on http://{config.server.host}:{config.server.port}/v1",
          file=sys.stderr)
    app = create_app(config, loaded, torch_thread)
    return run_server(app, config.server, a.log_level, sock)


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
    from ember.cluster.nodes import add_cluster_commands  # no Ray import: `ray start` runs as a command

    add_cluster_commands(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ember", description="A Fireworks-compatible completion server.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve POST /v1/completions over HTTP")
    for cls in (*ENGINE_CONFIGS, *SERVE_CONFIGS):
        add_config_flags(s, cls)
    s.add_argument("--log-level", default="info")
    c = sub.add_parser("complete", help="stream one completion to the terminal")
    for cls in ENGINE_CONFIGS:
        add_config_flags(c, cls)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from ember.loadgen.bench import bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["soak"]:
        from ember.loadgen.soak import soak_main

        return soak_main(argv[1:])
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if a.cmd in ("accounts", "users", "keys", "usage", "secrets"):
            return run_admin(a)
        if a.cmd == "jobs":
            return run_jobs(a)
        if a.cmd == "audit":
            return run_audit(a)
        if a.cmd == "cluster":
            from ember.cluster.nodes import run_cluster_command

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
