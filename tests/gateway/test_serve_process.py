"""A real `ember serve` process: auth modes, the README walk-through, kill -9 mid-write, and logs that
never hold a key."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import fireworks
import httpx
import pytest

from ember.cli.main import _config, build_parser, refuse_open_exposure
from ember.config import Config
from tests.conftest import MODEL_ID

EMBER = [sys.executable, "-m", "ember"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    def __init__(self, data_dir: str, log: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("ab")
        self.proc = subprocess.Popen([*EMBER, "serve", "--port", str(self.port), "--data-dir", data_dir,
                                      "--log-level", "debug", "--kv-cache-mb", "128", *args],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            assert self.proc.poll() is None, "ember serve exited during start-up"
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "ember serve did not start"
            time.sleep(0.2)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def cli(*args: str) -> str:
    r = subprocess.run([*EMBER, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def completion(url: str, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/completions", json={"model": MODEL_ID, "prompt": "Hi", "max_tokens": 1},
                      headers=headers, timeout=120)


def test_auto_mode_walkthrough_kill9_and_clean_logs(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    log = tmp_path / "server.log"
    server = Serve(data, log)
    secrets: list[str] = []
    try:
        assert completion(server.url, None).status_code == 200  # auto: open while no account exists
        # the README walk-through: create an account while the server runs, take the key with tail -1
        out = subprocess.run(f"{sys.executable} -m ember accounts create acme --email ops@acme.test "
                             f"--data-dir {data} | tail -1", shell=True, capture_output=True, text=True, timeout=120)
        admin = out.stdout.strip()
        assert re.fullmatch(r"fw_[A-Za-z0-9_-]{40,}", admin), out
        secrets.append(admin)
        time.sleep(1.2)  # auto mode re-checks the store at most once a second
        assert completion(server.url, None).status_code == 401
        assert completion(server.url, admin).status_code == 200
        fw = fireworks.Fireworks(api_key=admin, base_url=server.url, account_id="acme", max_retries=0, timeout=30)
        fw.users.create(user_id="bob", role="user")

        # create keys as fast as the server answers, and kill -9 it in the middle
        returned: list[tuple[str, str]] = []
        stop = threading.Event()

        def create_keys() -> None:
            while not stop.is_set():
                try:
                    k = fw.api_keys.create("bob", api_key={"display_name": "k"})
                except (fireworks.APIConnectionError, fireworks.APIStatusError):
                    return
                returned.append((k.key_id, k.key))

        t = threading.Thread(target=create_keys)
        t.start()
        while len(returned) < 15:
            time.sleep(0.01)
        server.kill9()
        stop.set()
        t.join(60)
        secrets += [k for _, k in returned]
    except BaseException:
        server.stop()
        raise

    server = Serve(data, log)
    try:
        for key_id, key in returned:  # every key the client saw created works after the kill
            assert completion(server.url, key).status_code == 200, key_id
        fw = fireworks.Fireworks(api_key=admin, base_url=server.url, account_id="acme", max_retries=0, timeout=30)
        listed = {k.key_id: k for k in fw.api_keys.list("bob")}
        assert set(listed) >= {kid for kid, _ in returned}
        assert len(listed) <= len(returned) + 1  # at most the one whose answer the kill cut off
        assert all(k.prefix and k.create_time and k.key is None for k in listed.values())
        assert completion(server.url, "fw_" + "q" * 43).status_code == 401
        httpx.get(server.url + "/v1/accounts/acme/users", headers={"authorization": "Bearer " + admin}, timeout=30)
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


def test_auth_keys_and_none_modes(tmp_path: Path) -> None:
    data = tempfile.mkdtemp(dir=tmp_path)
    log = tmp_path / "modes.log"
    server = Serve(data, log, "--auth", "keys")
    try:  # keys: required even with no account in the store
        assert completion(server.url, None).status_code == 401
        assert completion(server.url, "unused").status_code == 401
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # always open
    finally:
        server.stop()
    key = cli("accounts", "create", "acme", "--email", "a@b.c", "--data-dir", data).strip().splitlines()[-1]
    server = Serve(data, log, "--auth", "none")
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
