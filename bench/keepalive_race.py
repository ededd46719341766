"""The keep-alive race behind the soak's unexplained connection errors, A/B in one process (not a test).

httpx's pool (like Node's) reuses an idle connection for up to 5 s; uvicorn's default keep-alive timeout is
also 5 s. A client checks that a pooled connection is still open, then, its event loop busy for a moment
(64 soak clients parsing SSE and JSON), writes its request a few hundred ms later: by then the server has
closed that connection at its 5 s mark, its kernel answers the request with a reset, and the client gets
`httpx.ReadError` with no status line. ember now keeps idle connections for 75 s (ServerConfig).

    .venv/bin/python bench/keepalive_race.py [--clients 64] [--rounds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import threading
import time

import httpx
import uvicorn


async def app(scope, receive, send) -> None:  # noqa: ANN001 - a bare ASGI app: the server is not the subject
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            kind = m["type"].rsplit(".", 1)[1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def serve(keep_alive_s: float) -> tuple[uvicorn.Server, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", timeout_keep_alive=keep_alive_s))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


async def clients(url: str, n: int, rounds: int) -> tuple[int, list[str]]:
    errors: list[str] = []
    ok = 0
    stop = False

    def busy(loop: asyncio.AbstractEventLoop) -> None:  # the harness's loop blocked 0.3 s in every second
        time.sleep(0.3)
        if not stop:
            loop.call_later(0.7, busy, loop)

    limits = httpx.Limits(max_connections=n * 2, max_keepalive_connections=n + 4)  # as ember soak's pool
    async with httpx.AsyncClient(limits=limits) as http:
        async def one(i: int) -> None:
            nonlocal ok
            rng = random.Random(i)
            for _ in range(rounds):
                try:
                    ok += (await http.get(url)).status_code == 200
                except httpx.HTTPError as e:
                    errors.append(type(e).__name__)
                await asyncio.sleep(rng.uniform(4.6, 5.0))  # back just inside httpx's 5 s expiry

        loop = asyncio.get_running_loop()
        loop.call_later(0.7, busy, loop)
        await asyncio.gather(*(one(i) for i in range(n)))
        stop = True
    return ok, errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--rounds", type=int, default=8)
    a = p.parse_args()
    for keep_alive in (5.0, 75.0):  # uvicorn's default, ember's
        server, url = serve(keep_alive)
        ok, errors = asyncio.run(clients(url, a.clients, a.rounds))
        print(f"server keep-alive {keep_alive:4.0f} s: {ok} answered, {len(errors)} connection errors "
              f"{sorted(set(errors))}", flush=True)
        server.should_exit = True
        time.sleep(1)


if __name__ == "__main__":
    main()
