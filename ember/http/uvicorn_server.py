"""uvicorn under ember's shutdown contract: drain on the first signal, exit at once on the second.

    SIGTERM / SIGINT  ->  /health answers 503 {"status": "draining"}; any new request a retryable 503
                          (ember.http.draining); the listener stays open while requests are in flight, so
                          that a load balancer's probe sees the drain instead of a refused connection
                          requests in flight run on for up to drain_timeout_s
                          then those left end with a clear 503-shaped error (an error event in a stream)
                          then uvicorn closes the listeners and idle keep-alive connections
                          lifespan shutdown stops the engine loop; the process exits 0
    second signal     ->  exit now (status 128 + signal), nothing more is waited for

uvicorn's own handler re-raises the signal after a graceful shutdown (the process then dies of it, not 0)
and only lets a second SIGINT, not a second SIGTERM, cut the wait short; both are replaced here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Generator
from types import FrameType

import uvicorn
from fastapi import FastAPI

from ember.config import ServerConfig
from ember.errors import Overloaded
from ember.http.access_log import log_config
from ember.http.bounded_http import bounded_http_protocol
from ember.http.deps import AppState

log = logging.getLogger("ember")

POLL_S = 0.05
"""How often the drain looks whether requests are still in flight."""

CUT_GRACE_S = 5.0
"""After the drain timeout has failed what was left, how long uvicorn waits for those error responses to
be written before it cancels the handlers outright."""


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_timeout_s = drain_timeout_s

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        sigs = (signal.SIGINT, signal.SIGTERM)
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            os.write(2, f"ember: second {signal.Signals(sig).name}: exiting now\n".encode())
            os._exit(128 + sig)
        log.info("%s: draining requests in flight (up to %.0f s); a second signal exits at once",
                 signal.Signals(sig).name, self.drain_timeout_s)
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state: AppState | None = getattr(self.app.state, "ember", None)  # None when start-up failed
        timer = None
        if state is not None:
            state.draining = True
            timer = asyncio.get_running_loop().call_later(self.drain_timeout_s, self._cut, state)
            await self._serve_while_in_flight(self.drain_timeout_s + CUT_GRACE_S)
        try:
            await super().shutdown(sockets)
        finally:
            if timer is not None:
                timer.cancel()
        for h in logging.getLogger().handlers:
            h.flush()

    async def _serve_while_in_flight(self, limit_s: float) -> None:
        """Keep listening while any request is in flight (each is a task of uvicorn's; a probe's own
        task ends within milliseconds), at most `limit_s`: the drain timer has failed what was left by
        then."""
        deadline = asyncio.get_running_loop().time() + limit_s
        while self.server_state.tasks and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(POLL_S)

    def _cut(self, state: AppState) -> None:
        n = len(self.server_state.tasks)
        log.warning("drain timeout (%.0f s): ending %d request(s) still in flight", self.drain_timeout_s, n)
        state.client.fail_all(Overloaded("the server is shutting down", retry_after=1.0))


def uvicorn_config(app: FastAPI, server: ServerConfig, log_level: str = "info") -> uvicorn.Config:
    return uvicorn.Config(app, host=server.host, port=server.port, log_level=log_level, log_config=log_config(),
                          timeout_keep_alive=server.keep_alive_timeout_s,
                          http=bounded_http_protocol(server.max_header_kb * 1024),
                          timeout_graceful_shutdown=server.drain_timeout_s + CUT_GRACE_S)


def inherited_socket(fd: int) -> socket.socket:
    """The TCP socket a parent process handed down as file descriptor `fd` (ServerConfig.fd)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise ValueError(f"--fd {fd}: not an open socket ({e.strerror})") from e
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        sock.detach()  # not ours to close
        raise ValueError(f"--fd {fd}: not a TCP socket")
    return sock


def run_server(app: FastAPI, server: ServerConfig, log_level: str = "info",
               sock: socket.socket | None = None) -> int:
    """Serve until a signal, on `sock` when given (else bind server.host:server.port); the exit status: 0
    after a drained shutdown, 1 when start-up failed."""
    s = DrainingServer(uvicorn_config(app, server, log_level), app, server.drain_timeout_s)
    s.run(sockets=None if sock is None else [sock])
    sys.stderr.flush()
    return 0 if s.started else 1
