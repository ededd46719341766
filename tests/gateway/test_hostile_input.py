"""Hostile input is bounded before it costs anything: cheap validation, text bounded by length, capped
headers and bodies, admission before tokenizing.

One real ember (the SmolLM2 model, a SQLite store holding accounts, so keys are required) served through
ember's own uvicorn configuration (ember.http.uvicorn_server.uvicorn_config: the header bound lives there), on
127.0.0.1. Each test sends what an attacker would and asserts that the answer is a small 4xx that came
quickly, that other clients were not held up meanwhile, and, where timing alone would be a weak proof,
that the expensive work (tokenizing, compiling a grammar) never ran.
"""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from ember.app import create_app
from ember.config import ServerConfig, StoreConfig
from ember.http.uvicorn_server import uvicorn_config
from ember.model.loader import LoadedModel
from ember.store.accounts import Accounts
from ember.store.db import open_store
from tests.conftest import MODEL_ID, server_config
from tests.gateway.conftest import Platform
from tests.harness import UvicornThread

SMALL_ERROR = 64 * 1024
"""The most an error answer may weigh (main answered a 1 MB body with a 73.6 MB 422)."""
QUICK_S = 3.0
"""A refusal's time bound on a slow, shared 2-core host (main took 19 s for the first case)."""
HEALTH_S = 1.0
"""The most another client's /health may wait meanwhile (main: 18.7 s)."""


class EmberServer(UvicornThread):
    """ember's app behind uvicorn configured as `ember serve` configures it."""

    def __init__(self, data_dir: str, loaded: LoadedModel) -> None:
        app = create_app(server_config(data_dir=data_dir), loaded)
        super().__init__(app, server=uvicorn.Server(uvicorn_config(app, ServerConfig(), log_level="warning")))


@pytest.fixture(scope="module")
def hostile(smol_served: LoadedModel) -> Iterator[Platform]:
    data_dir = tempfile.mkdtemp(prefix="ember-hostile-")
    store = open_store(StoreConfig(data_dir=data_dir))
    acme = Accounts(store).create("acme", "ops@acme.test")
    store.close()
    with EmberServer(data_dir, smol_served) as s:
        yield Platform(s, data_dir, acme.key.key)  # type: ignore[arg-type]


class HealthWatch:
    """Polls /health from its own connection while a test runs; `worst` is the slowest answer's time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst = 0.0
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as c:
            while not self._stop.is_set():
                t = time.monotonic()
                c.get("/health")
                self.worst = max(self.worst, time.monotonic() - t)
                self.count += 1
                time.sleep(0.05)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def timed(send: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    t = time.monotonic()
    r = send()
    return r, time.monotonic() - t


# -- validating a small hostile body is cheap, and its error small ------------------------------------

def _hostile_bodies() -> list[tuple[str, str, Any]]:
    ids = list(range(300_000))
    ids[150_000] = -1
    return [
        ("/v1/completions", "completion: 300,000 token ids, one bad", {"model": MODEL_ID, "prompt": ids}),
        ("/v1/completions", "completion: a text, then 300,000 non-texts",
         {"model": MODEL_ID, "prompt": ["a"] + [1] * 300_000}),
        ("/v1/chat/completions", "chat: 50,000 bad messages",
         {"model": MODEL_ID, "messages": [{"role": "nobody", "content": 1}] * 50_000}),
        ("/detokenize", "detokenize: 300,000 non-ids", {"tokens": ["x"] * 300_000}),
        ("/v1/batches", "batches: metadata of 100,000 non-strings",
         {"input_file_id": "file-x", "endpoint": "/v1/completions", "completion_window": "24h",
          "metadata": {str(i): i for i in range(100_000)}}),
    ]


def test_a_small_body_of_many_bad_items_is_refused_fast_with_a_small_error(hostile: Platform) -> None:
    with hostile.http(hostile.admin_key) as c, HealthWatch(hostile.url) as health:
        for path, what, body in _hostile_bodies():
            raw = json.dumps(body)
            r, took = timed(lambda p=path, b=raw: c.post(p, content=b, headers={"content-type": "application/json"}))
            assert r.status_code in (400, 422), (what, r.status_code, r.text[:300])
            assert len(r.content) < SMALL_ERROR, (what, len(r.content))
            assert took < QUICK_S, (what, took)
            msg = r.json()["error"]["message"]
            assert len(msg) < 1000 and "Input should be" in msg, (what, msg)
    assert health.count > 0 and health.worst < HEALTH_S, health.worst


def test_a_batch_rows_error_line_is_small(hostile: Platform) -> None:
    """A batch row's validation error becomes its error-data line through the same shaping."""
    from pydantic import ValidationError

    from ember.http.errors import validation_body
    from ember.protocol.schemas import CompletionRequest

    ids = list(range(300_000))
    ids[7] = -1
    t = time.monotonic()
    with pytest.raises(ValidationError) as e:
        CompletionRequest.model_validate({"prompt": ids})
    line = json.dumps(validation_body(list(e.value.errors()))["error"])
    assert time.monotonic() - t < QUICK_S
    assert len(line) < 4096, len(line)


# -- text is bounded by its length before it is tokenized ----------------------------------------------

def _count_calls(obj: Any, name: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = getattr(obj, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, counting)
    return calls


@pytest.fixture()
def tokenizer_calls(hostile: Platform, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every call into the served tokenizer's fast path (both encode and the chat template's encode use it)."""
    tok = hostile.server.app.state.ember.model.tokenizer
    return _count_calls(tok.hf, "encode_batch", monkeypatch)


def test_a_text_that_cannot_fit_the_context_is_refused_untokenized(hostile: Platform,
                                                                   tokenizer_calls: list[int]) -> None:
    huge = "lorem ipsum " * 600_000  # 7.2 MB: longer than any text of max_model_len tokens
    with hostile.http(hostile.admin_key) as c, HealthWatch(hostile.url) as health:
        cases = [
            ("/v1/completions", {"model": MODEL_ID, "prompt": huge, "max_tokens": 1}, "prompt"),
            ("/v1/completions", {"model": MODEL_ID, "prompt": ["hi", huge], "max_tokens": 1}, "prompt"),
            ("/v1/chat/completions", {"model": MODEL_ID, "messages": [{"role": "user", "content": huge}]},
             "messages"),
            ("/v1/completions", {"model": MODEL_ID, "prompt": "hi", "max_tokens": 1, "prediction": huge},
             "prediction"),
            ("/v1/chat/completions", {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}],
                                      "prediction": {"type": "content", "content": huge}}, "prediction"),
            ("/tokenize", {"prompt": huge}, "prompt"),
            ("/tokenize", {"messages": [{"role": "user", "content": huge}]}, "messages"),
        ]
        for path, body, param in cases:
            r, took = timed(lambda p=path, b=body: c.post(p, json=b))
            assert r.status_code == 400, (path, param, r.status_code, r.text[:300])
            err = r.json()["error"]
            assert (err["code"], err["param"]) == ("context_length_exceeded", param), (path, err)
            assert took < QUICK_S, (path, param, took)
    assert tokenizer_calls == []
    assert health.worst < HEALTH_S, health.worst


def test_a_long_history_under_prompt_truncate_len_is_cut_by_length_first(hostile: Platform,
                                                                          tokenizer_calls: list[int]) -> None:
    """prompt_truncate_len drops the oldest turns; a history far past the limit is dropped by its length
    alone, not rendered and tokenized once per dropped turn, and the answer is the same."""
    old = [{"role": "user", "content": "word " * 20_000}, {"role": "assistant", "content": "ok"}] * 30
    body = {"model": MODEL_ID, "max_tokens": 1, "prompt_truncate_len": 64, "temperature": 0,
            "messages": [{"role": "system", "content": "Be brief."}, *old, {"role": "user", "content": "Hi"}]}
    with hostile.http(hostile.admin_key) as c:
        r, took = timed(lambda: c.post("/v1/chat/completions", json=body))
    assert r.status_code == 200, r.text[:300]
    assert r.json()["usage"]["prompt_tokens"] <= 64
    assert took < QUICK_S
    assert len(tokenizer_calls) <= 4, len(tokenizer_calls)  # main: one render per dropped turn (60)


def test_tokenize_and_detokenize_take_from_the_request_rate(hostile: Platform) -> None:
    key = hostile.key("counter", "admin", account_id="initech")
    with hostile.http(key) as c:
        r = c.patch("/v1/accounts/initech/quotas/requests-per-minute?allowMissing=true", json={"value": "3"})
        assert r.status_code == 200, r.text
        codes = [c.post("/tokenize", json={"prompt": "hello"}).status_code for _ in range(2)]
        codes += [c.post("/detokenize", json={"tokens": [1, 2]}).status_code for _ in range(2)]
    assert codes == [200, 200, 200, 429], codes


# -- headers and bodies are capped; the key is checked before the body is read --------------------------

def _raw(url: str, head: bytes, body: bytes = b"", read_timeout: float = 10.0) -> tuple[int, bytes, float]:
    """Send a raw request (the head, then as much of `body` as the server takes) and read the answer:
    (status, whole answer, seconds until it came)."""
    host, port = url.removeprefix("http://").split(":")
    t = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=read_timeout) as s:
        try:
            s.sendall(head)
            if body:
                s.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking it all: what is tested
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data and _complete(data):
                    break
        except (ConnectionResetError, TimeoutError):
            pass
    took = time.monotonic() - t
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data, took


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def test_an_oversized_header_block_is_refused_with_431(hostile: Platform) -> None:
    big = b"x-filler: " + b"a" * (2 * 1024 * 1024) + b"\r\n"
    with HealthWatch(hostile.url) as health:
        status, data, took = _raw(hostile.url, b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n" + big + b"\r\n")
    assert status == 431, data[:300]
    assert b"headers_too_large" in data
    assert took < QUICK_S
    assert health.worst < HEALTH_S
    # A head within the bound is served as before.
    ok = b"x-filler: " + b"a" * 30_000 + b"\r\n"
    status, _, _ = _raw(hostile.url, b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n" + ok
                        + b"\r\n")
    assert status == 200


def test_a_declared_oversized_body_is_refused_before_it_is_sent(hostile: Platform) -> None:
    head = (f"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {hostile.admin_key}\r\n"
            "content-type: application/json\r\ncontent-length: 200000000\r\n\r\n").encode()
    status, data, took = _raw(hostile.url, head)  # the body is never sent: main waited for it
    assert status == 413, data[:300]
    assert json.loads(data.partition(b"\r\n\r\n")[2])["error"]["type"] == "invalid_request_error"
    assert took < QUICK_S


def test_a_chunked_body_past_the_limit_is_cut_off_with_413(hostile: Platform) -> None:
    chunk = b"a" * (1024 * 1024)

    def body() -> Iterator[bytes]:
        for _ in range(64):  # 64 MiB, past the 8 MiB default
            yield chunk

    with hostile.http(hostile.admin_key) as c:
        r, took = timed(lambda: c.post("/v1/completions", content=body(),
                                       headers={"content-type": "application/json"}))
    assert r.status_code == 413, r.text[:300]
    assert took < 30


def test_no_key_is_a_401_before_the_body_is_read(hostile: Platform) -> None:
    for auth in ("", "authorization: Bearer not-a-key\r\n"):
        head = ("POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                f"{auth}content-length: 5000000\r\n\r\n").encode()
        status, data, took = _raw(hostile.url, head, b'{"model": MODEL_ID, "prompt": "')
        assert status == 401, data[:300]
        assert took < QUICK_S
        head = ("POST /v1/accounts/acme/datasets HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                f"{auth}content-length: 5000000\r\n\r\n").encode()
        status, data, took = _raw(hostile.url, head, b'{"datasetId": "')
        assert status == 401, data[:300]
        assert json.loads(data.partition(b"\r\n\r\n")[2])["code"] == 16  # the Gateway's shape: UNAUTHENTICATED


# -- admission and rate limits come before tokenizing or compiling --------------------------------------

def test_a_request_the_rate_refuses_is_never_tokenized_nor_compiled(hostile: Platform,
                                                                    tokenizer_calls: list[int],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    grammars = hostile.server.app.state.ember.model.grammars
    compiled = _count_calls(grammars, "compile", monkeypatch)
    key = hostile.key("limited", "admin", account_id="wayne")
    schema = {"type": "object", "properties": {f"f{i}": {"type": "string"} for i in range(40)}}
    body = {"model": MODEL_ID, "prompt": "Give JSON: " * 2000, "max_tokens": 1,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    with hostile.http(key) as c:
        assert c.patch("/v1/accounts/wayne/quotas/requests-per-minute?allowMissing=true",
                       json={"value": "1"}).status_code == 200
        assert c.post("/v1/completions", json={"model": MODEL_ID, "prompt": "hi", "max_tokens": 1}
                      ).status_code == 200
        tokenizer_calls.clear()
        r = c.post("/v1/completions", json=body)
        assert r.status_code == 429, r.text[:300]
        r = c.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": [{"role": "user",
                                                 "content": "Give JSON: " * 2000}], "max_tokens": 1})
        assert r.status_code == 429, r.text[:300]
    assert tokenizer_calls == [] and compiled == []


def test_a_request_the_queue_bound_sheds_is_never_tokenized(hostile: Platform,
                                                            tokenizer_calls: list[int]) -> None:
    platform = hostile.server.app.state.ember.platform
    backlog = platform.config.max_queued_requests + platform.max_running + 10
    platform.inflight += backlog  # as if that many sequences were admitted and waiting
    try:
        with hostile.http(hostile.admin_key) as c:
            r = c.post("/v1/completions", json={"model": MODEL_ID, "prompt": "hello " * 3000, "max_tokens": 1})
    finally:
        platform.inflight -= backlog
    assert r.status_code == 503, r.text[:300]
    assert tokenizer_calls == []


def test_a_token_limit_still_applies_after_tokenizing(hostile: Platform) -> None:
    key = hostile.key("tokens", "admin", account_id="tyrell")
    with hostile.http(key) as c:
        assert c.patch("/v1/accounts/tyrell/quotas/prompt-tokens-per-minute?allowMissing=true",
                       json={"value": "50"}).status_code == 200
        r = c.post("/v1/completions", json={"model": MODEL_ID, "prompt": "hello " * 200, "max_tokens": 1})
        assert r.status_code == 429, r.text[:300]
        assert "prompt" in r.json()["error"]["message"]
        assert c.post("/v1/completions", json={"model": MODEL_ID, "prompt": "hi", "max_tokens": 1}
                      ).status_code == 200


def test_an_upload_is_tokenized_in_bounded_pieces(hostile: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting an upload's tokens never hands the tokenizer more than a bounded piece of text at once
    (main gave it a whole 30 MB file's prompts in one call: 1.1 GB more peak memory; now 68 MB)."""
    from ember.gateway import datasets

    piece_chars = getattr(datasets, "PIECE_CHARS", 256 * 1024)  # (main has no such bound)
    tok = hostile.server.app.state.ember.model.tokenizer
    text = "lorem ipsum dolor " * 100_000  # 1.8 MB in one row, and twenty smaller rows beside it
    small = "sit amet " * 20_000
    expected = len(tok.encode(text, add_special_tokens=False)) + 20 * len(tok.encode(small, add_special_tokens=False))
    sizes: list[int] = []
    original = tok.hf.encode_batch

    def recording(texts: list[str], *args: Any, **kwargs: Any) -> Any:
        sizes.append(sum(len(t) for t in texts))
        return original(texts, *args, **kwargs)

    monkeypatch.setattr(tok.hf, "encode_batch", recording)
    rows = [{"custom_id": "big", "body": {"prompt": text}}]
    rows += [{"custom_id": f"r{i}", "body": {"prompt": small}} for i in range(20)]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    with hostile.http(hostile.admin_key) as c:
        assert c.post("/v1/accounts/acme/datasets", json={"datasetId": "pieces", "dataset": {}}).status_code == 200
        r = c.post("/v1/accounts/acme/datasets/pieces:upload", files={"file": ("in.jsonl", data)})
        assert r.status_code == 200, r.text[:300]
        ds = c.get("/v1/accounts/acme/datasets/pieces").json()
    assert sizes and max(sizes) <= piece_chars, max(sizes)
    assert abs(int(ds["estimatedTokenCount"]) - expected) <= 20, (ds, expected)
