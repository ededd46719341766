"""Chat completions and tokenize sit behind the same keys, limits and metering as completions."""

from __future__ import annotations

import time

import httpx
import openai

from tests.conftest import MODEL_ID
from tests.gateway.conftest import Platform
from tests.gateway.test_usage_limits import window


def test_chat_is_keyed_limited_and_metered(platform: Platform) -> None:
    admin = platform.key("admin", "admin", account_id="chatco")
    oa = openai.OpenAI(base_url=platform.url + "/v1", api_key=admin, max_retries=0, timeout=120)
    msgs = [{"role": "user", "content": "Say hi"}]
    r = oa.chat.completions.create(model=MODEL_ID, messages=msgs, max_tokens=5)
    chunks = list(oa.chat.completions.create(model=MODEL_ID, messages=msgs, max_tokens=4, stream=True,
                                             stream_options={"include_usage": True}))
    prompt = r.usage.prompt_tokens + chunks[-1].usage.prompt_tokens
    completion = r.usage.completion_tokens + chunks[-1].usage.completion_tokens
    with platform.http(admin) as c:
        raw = c.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": msgs, "max_tokens": 2})
        assert raw.headers["x-ratelimit-limit-tokens-prompt"] == "1000000"
        prompt += raw.json()["usage"]["prompt_tokens"]
        completion += raw.json()["usage"]["completion_tokens"]
        (row,) = c.get(f"/v1/accounts/chatco/billingUsage?{window()}").json()["serverlessCosts"]
        assert (int(row["promptTokens"]), int(row["completionTokens"])) == (prompt, completion)
        assert c.post("/tokenize", json={"model": MODEL_ID, "prompt": "Hello"}).status_code == 200
        c.patch("/v1/accounts/chatco/quotas/requests-per-minute?allowMissing=true", json={"value": "3"})
        time.sleep(0.1)
        codes = [c.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": msgs,
                                                       "max_tokens": 1}).status_code for _ in range(5)]
        assert 429 in codes
    with httpx.Client(base_url=platform.url, timeout=60) as anon:
        assert anon.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": msgs}).status_code == 401
        assert anon.post("/tokenize", json={"model": MODEL_ID, "prompt": "Hello"}).status_code == 401
        assert anon.get("/").status_code == 200  # the playground page itself is static and open
