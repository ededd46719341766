"""A real `ember serve` process: auth modes, the README walk-through, kill -9 mid-write, and logs that
never hold a key."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import fireworks
import httpx
import pytest

from ember.cli.main import _config, build_parser, refuse_open_exposure
from ember.config import Config
from tests.conftest import MODEL_ID
from tests.harness import EMBER, ServeProcess, bound_socket, wait_until

Serve = Callable[..., ServeProcess]
"""The ember_serve fixture: start `ember serve FLAGS`, stopped when the test ends."""


def cli(*args: str) -> str:
    r = subprocess.run([*EMBER, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def completion(url: str, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/completions", json={"model": MODEL_ID, "prompt": "Hi", "max_tokens": 1},
                      headers=headers, timeout=120)


def serve_flags(data_dir: str, *args: str) -> tuple[str, ...]:
    return ("--data-dir", data_dir, "--log-level", "debug", "--kv-cache-mb", "128", *args)


def test_auto_mode_walkthrough_kill9_and_clean_logs(tmp_path: Path, ember_serve: Serve) -> None:
    data = str(tmp_path / "data")
    log = tmp_path / "server.log"
    server = ember_serve(*serve_flags(data), log_path=log)
    secrets: list[str] = []
    stop = threading.Event()
    try:
        assert completion(server.url, None).status_code == 200  # auto: open while no account exists
        # the README walk-through: create an account while the server runs, take the key with tail -1
        out = subprocess.run(f"{sys.executable} -m ember accounts create acme --email ops@acme.test "
                             f"--data-dir {data} | tail -1", shell=True, capture_output=True, text=True, timeout=120)
        admin = out.stdout.strip()
        assert re.fullmatch(r"fw_[A-Za-z0-9_-]{40,}", admin), out
        secrets.append(admin)
        # auto mode re-checks the store at most once a second (tests/gateway/test_auth_clock.py)
        wait_until(lambda: completion(server.url, None).status_code == 401, 10, "auto mode to require keys")
        assert completion(server.url, admin).status_code == 200
        fw = fireworks.Fireworks(api_key=admin, base_url=server.url, account_id="acme", max_retries=0, timeout=30)
        fw.users.create(user_id="bob", role="user")

        # create keys as fast as the server answers, and kill -9 it in the middle
        returned: list[tuple[str, str]] = []

        def create_keys() -> None:
            while not stop.is_set():
                try:
                    k = fw.api_keys.create("bob", api_key={"display_name": "k"})
                except (fireworks.APIConnectionError, fireworks.APIStatusError):
                    return
                returned.append((k.key_id, k.key))

        t = threading.Thread(target=create_keys)
        t.start()
        wait_until(lambda: len(returned) >= 15, 120, "15 keys created", interval=0.01)
        server.kill9()
        stop.set()
        t.join(60)
        secrets += [k for _, k in returned]
    finally:
        stop.set()

    server = ember_serve(*serve_flags(data), log_path=log)
    try:
        for key_id, key in returned:  # every key the client saw created works after the kill
            assert completion(server.url, key).status_code == 200, key_id
        fw = fireworks.Fireworks(api_key=admin, base_url=server.url, account_id="acme", max_retries=0, timeout=30)
        listed = {k.key_id: k for k in fw.api_keys.list("bob")}
        assert set(listed) >= {kid for kid, _ in returned}
        assert len(listed) <= len(returned) + 1  # at most the one whose answer the kill cut off
        assert all(k.prefix and k.create_time and k.key is None for k in listed.values())
        assert completion(server.url, "fw_" + "q" * 43).status_code == 401
        users = httpx.get(server.url + "/v1/accounts/acme/users", headers={"authorization": "Bearer " + admin},
                          timeout=30)
        assert users.status_code == 200 and {"admin", "bob"} <= {u["name"].rsplit("/", 1)[1]
                                                                 for u in users.json()["users"]}, users.text
    finally:
        server.stop()

    from ember.store.api_keys import digest

    text = log.read_text(errors="replace")
    assert "POST /v1/completions" in text  # the log did record the requests
    for s in secrets:
        assert s not in text and digest(s) not in text and s[3:20] not in text
    assert "Bearer" not in text and "authorization" not in text.lower()


def test_refuses_to_serve_open_on_a_public_address(tmp_path: Path) -> None:
    r = subprocess.run([*EMBER, "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "refusing to serve without API keys" in r.stderr

    def config(*args: str) -> Config:
        return _config(build_parser().parse_args(["serve", *args, "--data-dir", str(tmp_path)]))

    refuse_open_exposure(config("--host", "127.0.0.1"))
    refuse_open_exposure(config("--host", "0.0.0.0", "--allow-unauthenticated"))
    refuse_open_exposure(config("--host", "0.0.0.0", "--auth", "keys"))
    refuse_open_exposure(config("--host", "0.0.0.0", "--api-key", "s3cret-static-key"))
    for args in (("--host", "0.0.0.0"), ("--host", "10.1.2.3", "--auth", "none")):
        with pytest.raises(ValueError, match="refusing"):
            refuse_open_exposure(config(*args))
    cli("accounts", "create", "acme", "--email", "a@b.c", "--data-dir", str(tmp_path))
    refuse_open_exposure(config("--host", "0.0.0.0"))  # auto with an account: keys are required


def test_auth_keys_and_none_modes(tmp_path: Path, ember_serve: Serve) -> None:
    data = tempfile.mkdtemp(dir=tmp_path)
    server = ember_serve(*serve_flags(data, "--auth", "keys"))
    # served on the socket the harness bound and handed down (--fd), under that socket's own address
    assert f"on http://127.0.0.1:{server.port}/v1" in server.log()
    try:  # keys: required even with no account in the store
        assert completion(server.url, None).status_code == 401
        assert completion(server.url, "unused").status_code == 401
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # always open
    finally:
        server.stop()
    key = cli("accounts", "create", "acme", "--email", "a@b.c", "--data-dir", data).strip().splitlines()[-1]
    server = ember_serve(*serve_flags(data, "--auth", "none"))
    try:  # none: never required, though accounts exist; a valid key is still metered to its account
        assert completion(server.url, None).status_code == 200
        assert completion(server.url, key).status_code == 200
        assert completion(server.url, "fw_" + "x" * 43).status_code == 200
        r = httpx.get(server.url + "/v1/accounts/acme", headers={"authorization": f"Bearer {key}"}, timeout=10)
        assert r.status_code == 200
    finally:
        server.stop()
    usage = cli("usage", "--account", "acme", "--data-dir", data)
    assert re.search(r"TEXT_COMPLETION\s+1\s", usage), usage  # exactly the keyed request
    assert os.path.exists(os.path.join(data, "ember.db"))


def test_fd_serves_the_inherited_socket_and_checks_its_own_address(tmp_path: Path) -> None:
    assert _config(build_parser().parse_args(["serve", "--fd", "7"])).server.fd == 7

    def serve_on(sock: socket.socket | int, *args: str) -> subprocess.CompletedProcess[str]:
        fd = sock if isinstance(sock, int) else sock.fileno()
        return subprocess.run([*EMBER, "serve", "--fd", str(fd), "--data-dir", str(tmp_path), *args],
                              pass_fds=(fd,), capture_output=True, text=True, timeout=120)

    with bound_socket("0.0.0.0") as sock:  # the socket's address decides exposure, not --host (loopback)
        r = serve_on(sock)
    assert r.returncode == 2 and "refusing to serve without API keys on 0.0.0.0" in r.stderr, r.stderr
    with bound_socket() as sock:  # Ray Serve's proxies bind their own port: a socket cannot be handed down
        r = serve_on(sock, "--replicas", "2")
    assert r.returncode == 2 and "--fd serves one process's socket" in r.stderr, r.stderr
    with (tmp_path / "not-a-socket").open("w") as f:
        r = serve_on(f.fileno())
    assert r.returncode == 2 and "not an open socket" in r.stderr, r.stderr
