"""The keep-alive race behind the soak's unexplained connection errors, A/B (not a test).

httpx's pool (like Node's) reuses an idle connection for up to 5 s after its last response; uvicorn's
default keep-alive timeout is also 5 s, counted from when the server finished the response (earlier than
the client's clock starts). A client that comes back at 4.9 s of its own idle time sends into a
connection whose server-side timer is due about then. When the server's event loop is late (the machine
is loaded, or another thread holds the GIL: ember's engine thread), the request's bytes arrive while the
loop is not reading; then the timer callback runs and closes the socket with those bytes unread, and the
kernel answers with a reset: the client gets `httpx.ReadError` and no status line. That is what the
64-client soak saw 3 times in 2,789 requests, all at one instant (one stall of the server's loop).

This serves a bare ASGI app with ember's uvicorn_config in a child process whose event loop competes for
the GIL with a busy thread (a long switch interval stands in for a loaded machine), and sends 64 httpx
clients at it that each come back just inside httpx's 5 s expiry. Keep-alive 5 s (uvicorn's default)
vs ember's default (ServerConfig.keep_alive_timeout_s).

    .venv/bin/python bench/keepalive_race.py [--clients 64] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time

import httpx

SERVER = r"""
import socket, sys, threading, time
import uvicorn
from ember.config import ServerConfig
from ember.http.uvicorn_server import uvicorn_config

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"].rsplit(".", 1)[1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})

def hog():  # pure Python: holds the GIL for whole switch intervals
    while True:
        sum(range(10_000))

sys.setswitchinterval(float(sys.argv[2]))
threading.Thread(target=hog, daemon=True).start()
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn_config(app, ServerConfig(keep_alive_timeout_s=float(sys.argv[1])), "error")).run(sockets=[sock])
"""


async def clients(url: str, n: int, rounds: int) -> tuple[int, list[str]]:
    errors: list[str] = []
    ok = 0
    limits = httpx.Limits(max_connections=n * 2, max_keepalive_connections=n + 4)  # as ember soak's pool
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        async def one(i: int) -> None:
            nonlocal ok
            rng = random.Random(i)
            await asyncio.sleep(rng.uniform(0, 1))
            for _ in range(rounds):
                try:
                    r = await http.get(url)
                    ok += r.status_code == 200
                except httpx.HTTPError as e:
                    errors.append(type(e).__name__)
                await asyncio.sleep(rng.uniform(4.85, 4.99))  # back just inside httpx's 5 s expiry

        await asyncio.gather(*(one(i) for i in range(n)))
    return ok, errors


def main() -> None:
    from ember.config import ServerConfig

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--switch-interval", type=float, default=0.1, help="the server's GIL switch interval (s)")
    a = p.parse_args()
    for keep_alive in (5.0, ServerConfig.keep_alive_timeout_s):
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(keep_alive), str(a.switch_interval)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            url = f"http://127.0.0.1:{server.stdout.readline().strip()}/"
            time.sleep(1.0)
            ok, errors = asyncio.run(clients(url, a.clients, a.rounds))
        finally:
            server.kill()
            server.wait()
        counts = {e: errors.count(e) for e in sorted(set(errors))}
        print(f"server keep-alive {keep_alive:4.0f} s: {ok} answered, {len(errors)} connection errors {counts}",
              flush=True)


if __name__ == "__main__":
    main()
