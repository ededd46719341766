"""`ember serve --replicas N`: one replica without --address is today's process (no Ray); two start a
local Ray of their own, serve, and leave nothing behind on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ember.config import ClusterConfig
from tests.harness import free_port, start_serve, wait_until
from tests.serve.cluster import MODEL, in_session, node_env, port_released, replicas_answering


def test_one_replica_without_address_never_imports_ray() -> None:
    assert not ClusterConfig().uses_ray
    assert ClusterConfig(replicas=2).uses_ray and ClusterConfig(address="127.0.0.1:6380").uses_ray
    code = ("import sys, ember.cli.main, ember.app, ember.cluster.deployment, ember.cluster.nodes, ember.cluster.proxy; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
    with pytest.raises(ValueError):
        ClusterConfig(replicas=0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_replicas_on_a_local_ray(tmp_path: Path) -> None:
    # Ray Serve's proxy binds the port itself: no socket can be handed down, so a free one is chosen.
    s = start_serve("--replicas", "2", "--kv-cache-mb", "32", "--data-dir", str(tmp_path), "--log-level", "warning",
                    log_path=tmp_path / "serve.log", port=free_port(), env=node_env(), new_session=True,
                    timeout=240, interval=2, ready=lambda s: len(replicas_answering(s.url, 8)) >= 2)
    try:
        with httpx.stream("POST", s.url + "/v1/completions", timeout=60,
                          json={"model": MODEL, "prompt": "Hi", "max_tokens": 4, "stream": True}) as r:
            assert r.status_code == 200
            assert [ln for ln in r.iter_lines() if ln.startswith("data: ")][-1] == "data: [DONE]"
    finally:
        status = s.stop(timeout=90)
    assert status == 0, s.log()[-3000:]
    try:
        wait_until(lambda: not in_session(s.proc.pid), 20, "Ray processes to exit", interval=0.5)
    finally:
        for pid in in_session(s.proc.pid):  # never leave them running, even when the wait failed
            os.kill(pid, signal.SIGKILL)
    assert port_released(s.port)


def test_sqlite_with_a_cluster_address_off_this_machine_is_refused(tmp_path) -> None:  # noqa: ANN001
    args = [sys.executable, "-m", "ember", "serve", "--replicas", "2", "--address", "10.9.8.7:6380",
            "--data-dir", str(tmp_path)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, env=node_env())
    assert out.returncode == 2, out.stderr
    assert "refusing to share the SQLite store" in out.stderr and "--db postgresql" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "ember.db").exists()  # refused before anything was opened or connected


def test_which_clusters_may_share_a_sqlite_file() -> None:
    from ember.cluster.deployment import check_nodes_share_sqlite, is_loopback_address
    from ember.config import StoreConfig

    assert is_loopback_address("127.0.0.1:6380") and is_loopback_address("localhost:6380")
    assert is_loopback_address("ray://127.0.0.2:10001") and is_loopback_address("[::1]:6380")
    assert not is_loopback_address("10.0.0.5:6380") and not is_loopback_address("head.example:6380")
    assert not is_loopback_address("auto")
    sqlite, pg = StoreConfig(data_dir="/tmp/x"), StoreConfig(url="postgresql+psycopg://u:p@db/ember")
    own = outgoing_address()  # Ray names a node of this host by this address, even one started on 127.0.0.1
    local = [{"NodeManagerAddress": "127.0.0.1", "Alive": True}, {"NodeManagerAddress": own, "Alive": True}]
    remote = [*local, {"NodeManagerAddress": "203.0.113.7", "Alive": True}]
    check_nodes_share_sqlite(sqlite, local)
    check_nodes_share_sqlite(sqlite, [*local, {"NodeManagerAddress": "203.0.113.7", "Alive": False}])  # gone
    check_nodes_share_sqlite(pg, remote)
    with pytest.raises(ValueError, match="203.0.113.7"):
        check_nodes_share_sqlite(sqlite, remote)


def outgoing_address() -> str:
    """This machine's address on its default route, found as Ray finds it (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        try:
            u.connect(("192.0.2.123", 9))
        except OSError:  # no route at all: loopback is all there is
            return "127.0.0.1"
        return u.getsockname()[0]
