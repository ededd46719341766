"""ember on Ray Serve: N replicas of the whole app (engine + platform) behind Serve's HTTP proxy.

Each replica is a Ray actor that builds `create_app(config)` itself (its own TorchThread, model and KV
cache, and its own Platform on the shared store), so the single-process app runs unchanged inside it.
Only this module, ember.cluster.router and ember.cluster.proxy import Ray; `ember serve` without
--replicas/--address never imports them.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass, replace

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.cluster.affinity import REPLICA_HEADER
from ember.cluster.proxy import CALLBACK_PATH
from ember.config import ClusterConfig, Config, StoreConfig
from ember.http.deps import AppState
from ember.routes.health import health_status

log = logging.getLogger("ember.cluster")

APP_NAME = "ember"
DEPLOYMENT_NAME = "ember"
NAMESPACE = "serve"
ROUTER_PATH = "ember.cluster.router:EmberAffinityRouter"
"""Imported by Serve in each proxy (a path, so that this module does not import Ray)."""
PROXY_ENV = {
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": CALLBACK_PATH,
    "RAY_USAGE_STATS_ENABLED": "0",
    # GOMP_SPINCOUNT as in ember.cli.main: torch's OpenMP workers spin briefly before sleeping.
    "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "3000000"),
}
"""The environment a Ray node needs for ember's routing (the proxy runs on the head)."""


class ReplicaHeader:
    """Names the replica on every response (JSON, SSE, errors): clients and tests see where they went."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.name = name.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (REPLICA_HEADER.encode(), self.name)]
            await send(message)

        await self.app(scope, receive, named)


def pin_threads(threads: int, local_rank: int) -> list[int]:
    """Pin this process (every thread it has now; later ones inherit) to `threads` cores chosen by the
    replica's rank on its node, so two replicas on one machine never share a core while cores suffice."""
    cores = sorted(os.sched_getaffinity(0))
    slots = max(1, len(cores) // threads)
    start = (local_rank % slots) * threads
    mine = cores[start:start + threads] or cores
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), mine)
        except OSError:  # a thread that ended meanwhile
            pass
    return mine


def engine_failure(state: AppState | None) -> str | None:
    """Why a replica must be replaced, or None: the rule /health uses, less "draining" (a replica that
    drains is being stopped by Serve already). None while the app is still starting (no state yet):
    Serve's own start-up timeout covers a start that hangs."""
    if state is None:
        return None
    status, stalled = health_status(state)
    if status in ("dead", "stalled"):
        return f"ember engine loop {status} ({stalled:.1f} s without a step on pending work)"
    return None


@dataclass
class ReplicaSpec:
    config: Config
    cluster: ClusterConfig


def build_application(config: Config, cluster: ClusterConfig):  # noqa: ANN201 - a ray.serve Application
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    threads = cluster.threads_per_replica
    max_ongoing = cluster.max_ongoing_requests or config.scheduler.max_num_seqs

    @serve.deployment(
        name=DEPLOYMENT_NAME,
        num_replicas=cluster.replicas,
        max_ongoing_requests=max_ongoing,
        max_queued_requests=cluster.max_queued_requests,
        health_check_period_s=cluster.health_check_period_s,
        health_check_timeout_s=cluster.health_check_timeout_s,
        graceful_shutdown_timeout_s=config.server.drain_timeout_s,
        ray_actor_options={"num_cpus": threads,
                           "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads)}}},
        request_router_config=RequestRouterConfig(
            request_router_class=ROUTER_PATH,
            request_router_kwargs={"num_fallback_replicas": cluster.fallback_replicas},
            # Queue lengths are probed per request; the cache only saves probes, affinity needs them fresh.
            request_routing_stats_period_s=10,
        ),
    )
    @serve.ingress()
    class EmberReplica:
        def __init__(self, spec: ReplicaSpec) -> None:
            import torch

            self.spec = spec
            ctx = serve.get_replica_context()
            self.name = ctx.replica_id.unique_id
            torch.set_num_threads(threads)
            self.cores = pin_threads(threads, ctx.rank.local_rank) if spec.cluster.pin_threads else None
            log.info("replica %s: %d torch thread(s), cores %s", self.name, threads, self.cores)
            self.web = None

        def __serve_build_asgi_app__(self) -> ASGIApp:
            from ember.app import create_app
            from ember.cluster.limits import shared_buckets

            self.web = create_app(self.spec.config, buckets=shared_buckets(NAMESPACE))
            self.web.add_middleware(ReplicaHeader, name=self.name)
            # GET /metrics answers for every replica: first in the route list, so it shadows the
            # single-process /metrics that create_app registered.
            self.web.router.add_api_route("/metrics", self.cluster_metrics, methods=["GET"])
            self.web.router.routes.insert(0, self.web.router.routes.pop())
            return self.web

        def metrics_text(self) -> tuple[str, str]:
            """(this replica's name, its registry as text): called on every replica by cluster_metrics."""
            from prometheus_client import generate_latest

            st = self.web.state
            st.metrics.observe_stats(st.ember.client.stats())
            return self.name, generate_latest(st.registry).decode()

        async def cluster_metrics(self) -> Response:
            from prometheus_client import CONTENT_TYPE_LATEST

            from ember.cluster.metrics import merge

            handle = serve.get_deployment_handle(DEPLOYMENT_NAME, APP_NAME)
            results = await handle.broadcast("metrics_text").results_async(return_exceptions=True)
            texts = dict(r for r in results if isinstance(r, tuple))  # a replica that failed is left out
            return Response(merge(texts), media_type=CONTENT_TYPE_LATEST)

        async def check_health(self) -> None:
            """Serve calls this every health_check_period_s; raising makes it replace the replica. The same
            rule as /health: the engine loop died, or has work and has not stepped for stall_timeout_s."""
            state = getattr(self.web.state, "ember", None) if self.web is not None else None
            failure = engine_failure(state)
            if failure is not None:
                raise RuntimeError(failure)

    return EmberReplica.bind(ReplicaSpec(config, cluster))


def shared_store(config: Config, cluster: ClusterConfig) -> Config:
    """The store every replica opens: migrated once here (N replicas migrating one database at once race
    on alembic's version table), and a SQLite path made absolute (replicas run in Ray's working dir)."""
    from ember.store.db import open_store

    store = config.store
    if store.url is None:
        store = replace(store, data_dir=os.path.abspath(store.resolved_data_dir()))
    if cluster.address and is_sqlite(store) and not is_loopback_address(cluster.address):
        raise ValueError(sqlite_refusal(store, f"the Ray cluster at {cluster.address} may span machines"))
    open_store(store).close()
    return replace(config, store=store)


# SQLite with --address: a SQLite file is shared safely only by processes of one machine (its locks are
# the local file system's; on NFS they are unreliable, and a replica on another machine would open a
# different, empty file of the same path). Only a head on a loopback address guarantees that every node
# is this machine: no other machine can join a cluster it reaches at 127.0.0.1. So SQLite is refused for
# any other address, and once connected every node present must be this machine too; anything else needs
# PostgreSQL. (A local Ray, without --address, is always one machine.)


def is_sqlite(store: StoreConfig) -> bool:
    return store.database_url().startswith("sqlite")


def is_loopback_address(address: str) -> bool:
    """Whether a Ray address (HOST:PORT, optionally ray://) names this machine's loopback interface."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sqlite_refusal(store: StoreConfig, why: str) -> str:
    return (f"refusing to share the SQLite store {store.database_url()} between replicas: {why}, and "
            "replicas on other machines cannot share a SQLite file. Pass --db postgresql+psycopg://..., "
            "or run every node on this machine with the head on 127.0.0.1 (`ember cluster up --head`).")


def is_this_machine(ip: str) -> bool:
    """Whether `ip` is one of this machine's own addresses (Ray reports a node started with
    --node-ip-address=127.0.0.1 under the host's primary address): only a local address can be bound."""
    if ip == "localhost":
        return True
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
        with socket.socket(family) as s:
            s.bind((ip, 0))
        return True
    except (ValueError, OSError):
        return False


def check_nodes_share_sqlite(store: StoreConfig, nodes: list[dict]) -> None:
    """After connecting: with SQLite, every live Ray node must be this machine."""
    if not is_sqlite(store):
        return
    remote = sorted({n.get("NodeManagerAddress", "?") for n in nodes if n.get("Alive")})
    remote = [a for a in remote if not is_this_machine(a)]
    if remote:
        raise ValueError(sqlite_refusal(store, f"Ray nodes at {', '.join(remote)} are not this machine"))


def use_token_auth_like_ray_start() -> None:
    """`ray start` turns token auth on when a token exists (~/.ray/auth_token, RAY_AUTH_TOKEN[_PATH]), but
    ray.init with an explicit address never does, and then cannot connect to such a cluster: do as
    `ray start` does, unless RAY_AUTH_MODE says otherwise."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.exists(token_file):
        os.environ["RAY_AUTH_MODE"] = "token"


def run_cluster(config: Config, cluster: ClusterConfig) -> int:
    """Start (or join) Ray, deploy the replicas behind one HTTP endpoint, serve until SIGINT/SIGTERM."""
    config = shared_store(config, cluster)
    for k, v in PROXY_ENV.items():
        os.environ.setdefault(k, v)  # before Ray starts: a local Ray's nodes inherit this environment
    if cluster.address:
        use_token_auth_like_ray_start()  # before Ray is imported: it reads RAY_AUTH_MODE once
    import ray
    from ray import serve

    if cluster.address:
        ray.init(address=cluster.address, namespace=NAMESPACE, runtime_env={"env_vars": PROXY_ENV})
        try:
            check_nodes_share_sqlite(config.store, ray.nodes())
        except ValueError:
            ray.shutdown()
            raise
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, cluster.replicas * cluster.threads_per_replica),
                 include_dashboard=False, namespace=NAMESPACE)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(proxy_location="HeadOnly",
                    http_options={"host": config.server.host, "port": config.server.port})
        serve.run(build_application(config, cluster), name=APP_NAME, route_prefix="/", blocking=False)
        print(f"ember: {cluster.replicas} replica(s) on Ray Serve at "
              f"http://{config.server.host}:{config.server.port}/v1", flush=True)
        stop.wait()
        print("ember: shutting down the replicas", flush=True)
    finally:
        try:
            serve.delete(APP_NAME)
            serve.shutdown()
            from ember.cluster.limits import kill_shared_buckets

            kill_shared_buckets(NAMESPACE)
        finally:
            ray.shutdown()
    return 0
