"""Tenants apart on a live server with two accounts: the prefix cache is keyed by account first.

Account acme's prompt must never show up as cached tokens (a timing and usage side channel) for
account globex, whether globex sends the same text or acme's `prompt_cache_isolation_key`; within one
account the cache works as before. (The open server keeps one shared cache: tests/api/test_parameters.py.)
"""

from __future__ import annotations

import uuid

from tests.conftest import MODEL_ID
from tests.gateway.conftest import Platform


def long_prompt(tag: str) -> str:
    # Well over 64 tokens, unique per test run, so no earlier test has cached it.
    return f"[{tag} {uuid.uuid4().hex}] " + "The committee reviewed every quarterly report in detail. " * 10


def cached(platform: Platform, key: str, prompt: str, **extra: object) -> int:
    with platform.http(key) as c:
        r = c.post("/v1/completions", json={"model": MODEL_ID, "prompt": prompt, "max_tokens": 1,
                                            "temperature": 0, **extra})
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def chat_cached(platform: Platform, key: str, text: str) -> int:
    with platform.http(key) as c:
        r = c.post("/v1/chat/completions", json={"model": MODEL_ID, "max_tokens": 1, "temperature": 0,
                                                 "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_accounts_never_share_cached_prefixes(platform: Platform) -> None:
    acme, acme2 = platform.admin_key, platform.key("tenancy-user", "inference-user")
    globex = platform.key("tenancy-admin", "admin", account_id="globex")
    prompt = long_prompt("shared-text")
    assert cached(platform, acme, prompt) == 0
    assert cached(platform, globex, prompt) == 0, "globex was served acme's cached prompt"
    assert cached(platform, acme2, prompt) >= 64, "another key of the same account must still hit"
    # A guessed prefix of acme's prompt shows nothing either (a third account: globex now holds the prompt).
    other = platform.key("tenancy-admin", "admin", account_id="tenancy-other")
    assert cached(platform, other, prompt[: len(prompt) * 2 // 3]) == 0
    text = long_prompt("chat")
    assert chat_cached(platform, acme, text) == 0
    assert chat_cached(platform, globex, text) == 0, "globex was served acme's cached conversation"
    assert chat_cached(platform, acme2, text) > 0


def test_isolation_keys_are_scoped_within_an_account(platform: Platform) -> None:
    acme, acme2 = platform.admin_key, platform.key("tenancy-user", "inference-user")
    globex = platform.key("tenancy-admin", "admin", account_id="globex")
    prompt = long_prompt("iso")
    assert cached(platform, acme, prompt, prompt_cache_isolation_key="team-a") == 0
    assert cached(platform, globex, prompt, prompt_cache_isolation_key="team-a") == 0, \
        "acme's isolation key reached into acme's cache from globex"
    assert cached(platform, acme2, prompt, prompt_cache_isolation_key="team-a") >= 64
    assert cached(platform, acme2, prompt, prompt_cache_isolation_key="team-b") == 0
