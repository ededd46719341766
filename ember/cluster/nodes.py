"""`ember cluster up | down`: `ray start` / `ray stop` with the environment ember's routing needs.

    ember cluster up --head --port 6380 --num-cpus 0          # machine A: the head (runs the HTTP proxy)
    ember cluster up --address A:6380 --num-cpus 4            # every worker machine
    ember serve --replicas 2 --address A:6380 --host 0.0.0.0  # from machine A

`down` is `ray stop`: it stops every Ray process of this user on the machine, not only ember's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys


def ray_executable() -> str:
    exe = shutil.which("ray", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        raise OSError("the `ray` command is missing: install ember[cluster]")
    return exe


def node_env() -> dict[str, str]:
    from ember.cluster.deployment import PROXY_ENV  # here, not at the top: every `ember` command parses this

    return {**os.environ, **PROXY_ENV}


def start_args(a: argparse.Namespace) -> list[str]:
    args = [ray_executable(), "start", "--disable-usage-stats", f"--num-cpus={a.num_cpus}"]
    if a.head:
        args += ["--head", f"--port={a.port}", "--node-ip-address=" + a.node_ip, "--include-dashboard=false"]
    else:
        if not a.address:
            raise ValueError("a worker needs --address HEAD_HOST:PORT (or pass --head)")
        args += [f"--address={a.address}", "--node-ip-address=" + a.node_ip]
    if a.object_store_mb:
        args.append(f"--object-store-memory={a.object_store_mb * 2**20}")
    if a.temp_dir:
        args.append(f"--temp-dir={a.temp_dir}")
    if a.block:
        args.append("--block")
    return args


def add_cluster_commands(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cluster", help="start or stop a Ray node for `ember serve --address`")
    csub = c.add_subparsers(dest="cluster_cmd", required=True)
    up = csub.add_parser("up", help="`ray start` with ember's routing environment")
    up.add_argument("--head", action="store_true", help="start the head node (the HTTP proxy runs here)")
    up.add_argument("--address", default=None, help="the head's HOST:PORT (a worker node)")
    up.add_argument("--port", type=int, default=6380, help="the head's GCS port")
    up.add_argument("--node-ip", default="127.0.0.1", help="this node's address as the others reach it")
    up.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1,
                    help="CPUs replicas may use here (0 on a head that should run no replica)")
    up.add_argument("--object-store-mb", type=int, default=200,
                    help="Ray's object store (Serve moves only small messages)")
    up.add_argument("--temp-dir", default=None)
    up.add_argument("--block", action="store_true", help="stay in the foreground")
    csub.add_parser("down", help="`ray stop`: every Ray process of this user on this machine")


def run_cluster_command(a: argparse.Namespace) -> int:
    if a.cluster_cmd == "up":
        return subprocess.call(start_args(a), env=node_env())
    return subprocess.call([ray_executable(), "stop"])
