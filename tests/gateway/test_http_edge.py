"""The HTTP edge: DNS rebinding against an open server, browser headers on the pages, a /docs page with
nothing from a CDN, two Authorization headers, and credentials kept out of the access log."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
import uvicorn

from ember.app import create_app
from ember.config import ServerConfig
from ember.http.uvicorn_server import uvicorn_config
from ember.model.loader import LoadedModel
from tests.conftest import MODEL_ID, LiveServer, server_config
from tests.gateway.conftest import Platform
from tests.harness import UvicornThread, wait_until

BODY = {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 1}


def test_an_open_server_refuses_foreign_host_names(smol_server: LiveServer) -> None:
    port = smol_server.port
    with httpx.Client(base_url=smol_server.url, timeout=60) as h:
        for host in ("evil.example", f"evil.example:{port}", "attacker.localhost.example", "127.0.0.1.nip.io"):
            r = h.post("/v1/completions", json=BODY, headers={"host": host})
            assert r.status_code == 421, (host, r.status_code)
            assert r.json()["error"]["type"] == "invalid_request_error"
            assert h.get("/", headers={"host": host}).status_code == 421
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", "LOCALHOST.",
                     f"10.0.0.5:{port}"):
            assert h.post("/v1/completions", json=BODY, headers={"host": host}).status_code == 200, host


def test_a_server_that_requires_keys_answers_any_host(platform: Platform) -> None:
    with platform.http(platform.admin_key) as h:
        assert h.post("/v1/completions", json=BODY, headers={"host": "ember.internal.example"}).status_code == 200
        assert h.get("/v1/accounts/acme", headers={"host": "ember.internal.example"}).status_code == 200


def test_an_open_server_answers_its_public_url_host(smol_served: LoadedModel) -> None:
    cfg = replace(server_config(), server=ServerConfig(public_url="https://ember.example.com"))
    with LiveServer(cfg, smol_served) as s, httpx.Client(base_url=s.url, timeout=60) as h:
        assert h.get("/v1/models", headers={"host": "ember.example.com"}).status_code == 200
        assert h.get("/v1/models", headers={"host": "other.example.com"}).status_code == 421


def test_pages_carry_a_csp_nosniff_and_frame_protection(smol_server: LiveServer) -> None:
    with httpx.Client(base_url=smol_server.url, timeout=60) as h:
        for path in ("/", "/playground/app.js", "/playground/style.css", "/docs"):
            r = h.get(path)
            assert r.status_code == 200, path
            csp = r.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
            assert r.headers["x-frame-options"] == "DENY", path
            assert r.headers["x-content-type-options"] == "nosniff", path
        assert h.get("/v1/models").headers["x-content-type-options"] == "nosniff"


def test_docs_load_nothing_from_another_origin(smol_server: LiveServer) -> None:
    with httpx.Client(base_url=smol_server.url, timeout=60) as h:
        page = h.get("/docs").text
        assert "http://" not in page and "https://" not in page and "<script>" not in page  # no inline script
        for src in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/docs/init.js"):
            assert src in page
            r = h.get(src)
            assert r.status_code == 200 and r.headers["content-security-policy"], src
        assert "/openapi.json" in h.get("/docs/init.js").text
        assert h.get("/redoc").status_code == 404  # ReDoc came from a CDN too


def test_two_authorization_headers_are_refused(platform: Platform) -> None:
    other = platform.key("mallory", "inference-user")
    headers = [("authorization", f"Bearer {platform.admin_key}"), ("authorization", f"Bearer {other}")]
    with httpx.Client(base_url=platform.url, timeout=60) as h:
        r = h.post("/v1/completions", json=BODY, headers=headers)
        assert r.status_code == 400 and "one Authorization header" in r.json()["error"]["message"]
        r = h.get("/v1/accounts/acme/users", headers=headers)
        assert r.status_code == 400 and "one Authorization header" in r.json()["message"]
        r = h.get("/v1/accounts", headers=headers)
        assert r.status_code == 400
        ok = h.post("/v1/completions", json=BODY, headers={"authorization": f"Bearer {platform.admin_key}"})
        assert ok.status_code == 200


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logged_server(smol_served: LoadedModel) -> Iterator[tuple[str, _Collect]]:
    """ember's app under the uvicorn configuration `ember serve` uses (access log on)."""
    app = create_app(server_config(), smol_served)
    server = uvicorn.Server(uvicorn_config(app, ServerConfig(), "info"))  # configures logging: before addHandler
    collect = _Collect()
    logging.getLogger("uvicorn.access").addHandler(collect)
    try:
        with UvicornThread(app, server=server) as s:
            yield s.url, collect
    finally:
        logging.getLogger("uvicorn.access").removeHandler(collect)


def test_the_access_log_never_holds_signatures_or_keys(logged_server: tuple[str, _Collect]) -> None:
    url, collect = logged_server
    secrets = ("0123456789abcdef0123456789abcdef", "fw_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "tok-xyz-123")
    with httpx.Client(base_url=url, timeout=60) as h:
        h.get(f"/v1/datasetFiles/acme/ds/input.jsonl?expires=1&kid=k1&signature={secrets[0]}")
        h.get(f"/v1/models?key={secrets[1]}&api_key={secrets[1]}&access_token={secrets[2]}&page=2")
    wait_until(lambda: len(collect.lines) >= 2, 10, "two access-log lines")
    text = "\n".join(collect.lines)
    assert not any(s in text for s in secrets), text
    assert "signature=REDACTED" in text and "key=REDACTED" in text and "page=2" in text and "expires=1" in text
