"""Servers for tests, and one way to wait for something.

- `wait_until`: poll a condition with a timeout; the failure names what was awaited and what was last seen.
- `UvicornThread` / `LiveServer`: an app served from a thread of the test process.
- `start_serve`: the real `ember serve` as a child process, waited for until /health answers 200.

Every server listens on a socket bound here, in the test process, before the server starts: the port is
owned from the first moment, so no other process can take it between choosing and binding (the race of
"bind port 0, read the number, close, pass the number on"). A child process gets the socket as an
inherited file descriptor (`ember serve --fd`). Only Ray Serve binds its port itself; `free_port` is for
that and for Ray's own node ports.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI

from ember.config import Config
from ember.model.loader import LoadedModel

T = TypeVar("T")

EMBER = [sys.executable, "-m", "ember"]
"""The CLI as a child process runs it."""


def wait_until(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call `cond` every `interval` seconds until it returns something truthy, and return that. Past
    `timeout` seconds: TimeoutError naming `what` and the last value `cond` returned. An exception
    raised by `cond` is not caught: a condition that may fail while it waits catches its own."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}; last seen: {got!r}")
        time.sleep(interval)


def free_port() -> int:
    """A port that was free a moment ago. Racy by nature (another process may bind it before the user
    does): only for servers that must bind their port themselves, i.e. Ray and Ray Serve."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A TCP socket bound to a port the OS picked, not yet listening: connections are refused until the
    server that gets it starts to listen."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    return sock


class UvicornThread:
    """uvicorn serving `app` on 127.0.0.1 from a background thread of the test process; entering waits
    until start-up (the app's lifespan included) has finished. `server`: a uvicorn.Server of `app` to run
    instead of a plain one (ember's DrainingServer)."""

    def __init__(self, app: FastAPI, *, lifespan: str = "on", start_timeout: float = 60.0,
                 server: uvicorn.Server | None = None) -> None:
        self.app = app
        self.sock = bound_socket()
        self.port = self.sock.getsockname()[1]
        self.start_timeout = start_timeout
        self.server = server or uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()

        def started() -> bool:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread ended during start-up")
            return self.server.started

        wait_until(started, self.start_timeout, "the server to start", interval=0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


class LiveServer(UvicornThread):
    """ember's real app, serving an already loaded model; `clock`: see create_app (tests.fake_clock)."""

    def __init__(self, config: Config, loaded: LoadedModel, clock: Callable[[], float] = time.monotonic) -> None:
        from ember.app import create_app

        super().__init__(create_app(config, loaded, clock=clock))

    @property
    def engine(self):  # noqa: ANN201 - the app's Engine
        return self.app.state.ember.client.engine


@dataclass
class ServeProcess:
    """A running `ember serve` child process; everything it prints goes to `log_path`."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        """SIGKILL: a crash, with nothing flushed or closed."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (a drained shutdown), then SIGKILL past `timeout`; the exit status. Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def health_ok(s: ServeProcess) -> bool:
    try:
        return httpx.get(s.url + "/health", timeout=5).status_code == 200
    except httpx.TransportError:  # not listening yet, or busy loading
        return False


def start_serve(*flags: str, log_path: Path, port: int | None = None, env: dict[str, str] | None = None,
                new_session: bool = False, timeout: float = 180,
                ready: Callable[[ServeProcess], bool] = health_ok, interval: float = 0.2) -> ServeProcess:
    """`ember serve FLAGS` on a socket bound here and handed down with --fd, or on `port` (for Ray Serve,
    which binds its own); returns once `ready` (by default: /health answers 200). The log file is
    appended to, so that a restarted server's lines follow its predecessor's. A server that exits or is
    not ready within `timeout` is stopped, and the error shows its log's tail."""
    args = [*EMBER, "serve", *flags]
    sock = None
    if port is None:
        sock = bound_socket()
        port = sock.getsockname()[1]
        args += ["--fd", str(sock.fileno())]
    else:
        args += ["--port", str(port)]
    env = {**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"}
    try:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    pass_fds=() if sock is None else (sock.fileno(),),
                                    start_new_session=new_session)
    finally:
        if sock is not None:
            sock.close()  # the child holds it now; a copy here would keep the port open after the child closes it
    s = ServeProcess(proc, f"http://127.0.0.1:{port}", log_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"ember serve exited with status {proc.returncode} during start-up:\n"
                                 + s.log()[-3000:])
        return ready(s)

    try:
        wait_until(up, timeout, "ember serve to be ready", interval=interval)
    except TimeoutError as e:
        s.stop(timeout=10)
        raise TimeoutError(f"{e}\n{s.log()[-3000:]}") from None
    except BaseException:
        s.stop(timeout=10)
        raise
    return s
