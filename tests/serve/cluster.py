"""A two-node Ray cluster on 127.0.0.1 and `ember serve --replicas 2 --address` on it, as processes the
tests start and stop themselves (never `ray stop`, which would stop every Ray process on the machine)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ember.cluster.nodes import node_env as ember_node_env
from ember.cluster.nodes import ray_executable
from tests.harness import ServeProcess, free_port, start_serve, wait_until

MODEL = "accounts/fireworks/models/smollm2-135m-instruct"


AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
"""Ray's token auth with a token of this test run: no dependence on ~/.ray/auth_token."""


def node_env() -> dict[str, str]:
    return {**ember_node_env(), **AUTH}


def node_args(temp_dir: str, cpus: int = 1) -> list[str]:
    # Every port a node binds, chosen free: two nodes on one host would collide on Ray's fixed defaults.
    return ["--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
            f"--object-store-memory={100 * 2**20}", f"--temp-dir={temp_dir}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]


def port_released(port: int, timeout: float = 15.0) -> bool:
    """Nothing listens on `port` any more (SO_REUSEADDR: connections left in TIME_WAIT do not count)."""

    def bindable() -> bool:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

    return wait_until(bindable, timeout, f"port {port} to be released", interval=0.5)


def in_session(sid: int) -> list[int]:
    """Live processes of session `sid`: a node started in its own session, with every process it forked,
    including Ray's agents, which rename their command line and so escape processes_under."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(d))
    return pids


def processes_under(marker: str) -> list[int]:
    """Live processes whose command line names `marker` (the cluster's temp dir)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{d}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmd and state != "Z":
            pids.append(int(d))
    return pids


@dataclass
class RayCluster:
    temp_dir: str
    address: str
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)
    sessions: set[int] = field(default_factory=set)
    left_behind: list[int] = field(default_factory=list)
    """Every node's session id (its `ray start` pid): what must be empty after shutdown."""

    def leftovers(self) -> list[int]:
        return sorted({*processes_under(self.temp_dir), *(p for sid in self.sessions for p in in_session(sid))})

    def add_worker(self, name: str) -> None:
        args = [ray_executable(), "start", f"--address={self.address}", *node_args(self.temp_dir)]
        self.nodes[name] = subprocess.Popen(args, env=node_env(), start_new_session=True,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.sessions.add(self.nodes[name].pid)

    def active_nodes(self) -> int:
        """Nodes the head counts alive (`ray status`)."""
        out = subprocess.run([ray_executable(), "status", f"--address={self.address}"], env=node_env(),
                             capture_output=True, text=True, timeout=60).stdout
        active = out.split("Active:", 1)[-1].split("Pending:", 1)[0] if "Active:" in out else ""
        return sum(1 for line in active.splitlines() if "node_" in line)

    def replica_processes(self, name: str) -> list[int]:
        """Serve replica actors running on node `name` (Ray renames an actor's process
        `ray::ServeReplica:<app>:<deployment>`)."""
        pids = []
        for pid in in_session(self.nodes[name].pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().startswith(b"ray::ServeReplica"):
                        pids.append(pid)
            except OSError:
                pass
        return pids

    def remove(self, name: str) -> None:
        p = self.nodes.pop(name)
        with _suppress():
            os.killpg(p.pid, signal.SIGKILL)  # the node's raylet, its workers and replicas: a machine lost
        p.wait(timeout=30)

    def shutdown(self) -> None:
        for name in [n for n in self.nodes if n != "head"] + ["head"]:
            if name in self.nodes:
                p = self.nodes.pop(name)
                with _suppress():
                    os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    with _suppress():
                        os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=10)
        deadline = time.monotonic() + 20
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.5)


@contextmanager
def _suppress() -> Iterator[None]:
    try:
        yield
    except (ProcessLookupError, PermissionError):
        pass


WORKERS = ("worker-a", "worker-b")


@contextmanager
def ray_cluster() -> Iterator[RayCluster]:
    """A head with no CPUs for replicas (it runs Serve's controller and proxy, which need none) and two
    worker nodes of 1 CPU each: one replica lands on each worker, as on a real multi-node cluster."""
    temp_dir = tempfile.mkdtemp(prefix="ember-ray-", dir="/tmp")  # short: Ray's unix sockets live here
    port = free_port()
    c = RayCluster(temp_dir, f"127.0.0.1:{port}")
    head = [ray_executable(), "start", "--head", f"--port={port}", "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}", *node_args(temp_dir, cpus=0)]
    c.nodes["head"] = subprocess.Popen(head, env=node_env(), start_new_session=True,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c.sessions.add(c.nodes["head"].pid)
    try:
        wait_until(lambda: os.path.exists(os.path.join(temp_dir, "ray_current_cluster")), 60, "the Ray head",
                   interval=0.5)
        for n, name in enumerate(WORKERS, start=2):
            # one at a time: two `ray start` of one host joining at once, the second exits with status 1
            c.add_worker(name)
            wait_until(lambda n=n: c.active_nodes() >= n, 90, f"Ray node {name}", interval=0.5)
        yield c
    finally:
        c.shutdown()
        left = c.leftovers()
        for pid in left:  # never leave them running, even when the test below fails on them
            with _suppress():
                os.kill(pid, signal.SIGKILL)
        c.left_behind = left
        shutil.rmtree(temp_dir, ignore_errors=True)  # Ray's session logs: hundreds of MB over many runs


@dataclass
class ClusterServer:
    server: ServeProcess
    data_dir: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.server.proc

    def log(self) -> str:
        return self.server.log()[-4000:]


@contextmanager
def ember_on_cluster(cluster: RayCluster, data_dir: str, *extra: str) -> Iterator[ClusterServer]:
    # Ray Serve's proxy binds the port itself: no socket can be handed down, so a free one is chosen.
    server = start_serve("--replicas", "2", "--address", cluster.address, "--kv-cache-mb", "32", "--data-dir",
                         data_dir, "--threads-per-replica", "1", "--log-level", "warning", *extra,
                         log_path=Path(data_dir) / "serve.log", port=free_port(), env=node_env(),
                         new_session=True, timeout=240, interval=0.5,
                         ready=lambda s: "replica(s) on Ray Serve" in s.log())
    try:
        wait_until(lambda: len(replicas_answering(server.url)) == 2, 120, "both replicas", interval=0.5)
        yield ClusterServer(server, data_dir)
    finally:
        server.stop()  # SIGTERM: ember alone; it deletes the app, then disconnects


def complete(url: str, body: dict, headers: dict | None = None, timeout: float = 60) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json={"model": MODEL, **body}, headers=headers or {},
                      timeout=timeout)


def replicas_answering(url: str, n: int = 8) -> set[str]:
    import concurrent.futures as cf

    def one(i: int) -> str | None:
        try:
            r = complete(url, {"prompt": f"ping {i}", "max_tokens": 16}, timeout=30)
        except httpx.HTTPError:
            return None
        return r.headers.get("x-ember-replica") if r.status_code == 200 else None

    with cf.ThreadPoolExecutor(n) as ex:
        return {r for r in ex.map(one, range(n)) if r}
