"""The playground page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Each test leaves a screenshot of the states it checks under test-output/playground/ (or
$EMBER_TEST_OUTPUT/playground/), so a reviewer can see what the browser saw.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from ember.config import CacheConfig, Config, SchedulerConfig, ServerConfig
from tests.api.test_disconnect import wait_idle
from tests.conftest import MODEL_ID, LiveServer

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUT = Path(os.environ.get("EMBER_TEST_OUTPUT", Path(__file__).resolve().parents[2] / "test-output")) / "playground"
KEY = "right-key"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"])
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def key_server(smol_served) -> Iterator[LiveServer]:
    cfg = Config(cache=CacheConfig(kv_cache_mb=64), scheduler=SchedulerConfig(max_num_seqs=4),
                 server=ServerConfig(api_keys=(KEY,)))
    with LiveServer(cfg, smol_served) as s:
        yield s


def csp_violations(page: Page) -> list[str]:
    """The page's Content-Security-Policy complaints, as the console reports them from now on."""
    found: list[str] = []
    page.on("console", lambda m: found.append(m.text) if "Content Security Policy" in m.text else None)
    return found


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)


def open_page(page: Page, server: LiveServer) -> None:
    page.goto(server.url + "/")
    expect(page.locator("#model option")).to_have_text([MODEL_ID])


def set_greedy(page: Page, max_tokens: int) -> None:
    page.fill("#temperature", "0")
    page.fill("#max_tokens", str(max_tokens))


def watch_tokens(page: Page) -> None:
    """Record, in the page, how many tokens the answer holds each time the DOM changes."""
    page.evaluate("""() => {
        window.__seen = [];
        new MutationObserver(() => {
            const n = document.querySelectorAll('.msg.assistant .tok, .msg.completion .tok').length;
            const last = window.__seen[window.__seen.length - 1];
            if (!last || last[0] !== n) window.__seen.push([n, performance.now()]);
        }).observe(document.getElementById('transcript'), {childList: true, subtree: true});
    }""")


def wait_done(page: Page) -> None:
    expect(page.locator("#send")).to_be_enabled(timeout=120_000)
    expect(page.locator(".finish").last).to_be_visible(timeout=120_000)


def last_request(page: Page) -> dict:
    return page.evaluate("() => ui.lastRequest")


def test_streamed_chat_with_token_view_and_metrics(smol_server, page: Page) -> None:
    open_page(page, smol_server)
    shot(page, "1-loaded")
    assert page.get_by_label("API key").is_visible() and page.locator("#banner").is_hidden()
    set_greedy(page, 24)
    page.get_by_label("colour tokens by probability").check()
    page.fill("#top_logprobs", "3")
    page.fill("#system", "You are a geography expert. Answer briefly.")
    watch_tokens(page)
    page.get_by_label("Message", exact=True).fill("What is the capital of France?")
    page.get_by_role("button", name="Send").click()
    wait_done(page)
    seen = [(n, t) for n, t in page.evaluate("() => window.__seen") if n > 0]
    # Tokens arrive over time, not in one lump at the end.
    assert len(seen) >= 3 and seen[-1][1] - seen[0][1] > 50, f"tokens did not arrive one by one: {seen}"
    shot(page, "2-streamed-chat")

    # The page shows exactly what the server answers for the same request, unstreamed.
    req = last_request(page)
    assert req["url"] == "/v1/chat/completions"
    assert req["body"]["messages"][0] == {"role": "system", "content": "You are a geography expert. Answer briefly."}
    body = dict(req["body"], stream=False)
    body.pop("stream_options")
    ref = httpx.post(smol_server.url + req["url"], json=body, timeout=120).json()
    answer = page.locator(".msg.assistant .body").last
    assert answer.inner_text() == ref["choices"][0]["message"]["content"]
    assert "Paris" in answer.inner_text()

    # Token view: each token coloured by its probability, hovering shows its top alternatives.
    tokens = answer.locator(".tok")
    want = ref["choices"][0]["logprobs"]["content"]
    assert tokens.count() == len(want)
    k = max(range(len(want)), key=lambda i: len(want[i]["top_logprobs"]) and -want[i]["logprob"])
    tokens.nth(k).hover()
    tip = page.locator("#tooltip")
    expect(tip).to_be_visible()
    shot(page, "3-token-view")
    rows = tip.locator("tr").all_inner_texts()
    alternatives = [a for a in want[k]["top_logprobs"] if a["token"] != want[k]["token"]]
    assert alternatives, "the chosen token had top alternatives"
    alt = alternatives[0]
    assert any(r.startswith(json.dumps(alt["token"])) for r in rows), (rows, alt)
    assert any(f"{100 * 2.718281828459045 ** alt['logprob']:.1f}%" in r for r in rows)
    assert tokens.nth(k).get_attribute("style").startswith("background")
    page.keyboard.press("Escape")
    expect(tip).to_be_hidden()
    # Keyboard users reach the same view by focusing a token.
    tokens.nth(0).focus()
    expect(tip).to_be_visible()

    # Usage and perf metrics from the final chunk.
    assert page.locator("#m-prompt").inner_text() == str(ref["usage"]["prompt_tokens"])
    assert page.locator("#m-completion").inner_text() == str(ref["usage"]["completion_tokens"])
    final = page.evaluate("() => ui.lastFinal")
    perf, n = final["perf_metrics"], final["usage"]["completion_tokens"]
    decode_rate = (n - 1) / (perf["server-processing-time"] - perf["server-time-to-first-token"])
    assert float(page.locator("#m-tps").inner_text()) == pytest.approx(decode_rate, abs=0.06) and decode_rate > 0
    assert page.locator("#m-ttft").inner_text().endswith(" s")
    assert page.locator("#m-server-ttft").inner_text().endswith(" s")

    # A second turn carries the history, and its prefix comes from the cache.
    page.get_by_label("Message", exact=True).fill("And of Italy?")
    page.get_by_role("button", name="Send").click()
    wait_done(page)
    roles = [m["role"] for m in last_request(page)["body"]["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert int(page.locator("#m-cached").inner_text()) > 0
    shot(page, "3b-second-turn")


def test_copy_as_curl_and_python_reproduce_the_request(smol_server, page: Page) -> None:
    open_page(page, smol_server)
    set_greedy(page, 8)
    page.get_by_label("Message", exact=True).fill("Say hello.")
    page.get_by_label("Message", exact=True).press("Control+Enter")  # keyboard send
    wait_done(page)
    shown = page.locator(".msg.assistant .body").last.inner_text()

    page.get_by_role("button", name="Copy as curl").click()
    expect(page.locator("#copy-status")).to_have_text("Copied as curl.")
    curl = page.evaluate("() => navigator.clipboard.readText()")
    assert curl == page.locator("#snippet").inner_text() and curl.startswith("curl ")
    shot(page, "4-copied-curl")
    run = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120, check=True)
    events = [line[6:] for line in run.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == shown

    page.get_by_role("button", name="Copy as Python").click()
    py = page.evaluate("() => navigator.clipboard.readText()")
    run = subprocess.run([sys.executable, "-c", py], capture_output=True, text=True, timeout=120, check=True)
    assert "chat.completion.chunk" in run.stdout and "[DONE]" in run.stdout


def test_copied_snippets_never_hold_the_key_and_the_page_obeys_its_csp(key_server, page: Page) -> None:
    csp_errors = csp_violations(page)
    page.goto(key_server.url + "/")
    page.get_by_label("API key").fill(KEY)
    page.get_by_label("API key").press("Tab")
    expect(page.locator("#model option")).to_have_text([MODEL_ID])
    set_greedy(page, 4)
    page.get_by_label("Message", exact=True).fill("Say hello.")
    page.get_by_role("button", name="Send").click()
    wait_done(page)
    shown = page.locator(".msg.assistant .body").last.inner_text()
    env = {**os.environ, "FIREWORKS_API_KEY": KEY}

    page.get_by_role("button", name="Copy as curl").click()
    curl = page.evaluate("() => navigator.clipboard.readText()")
    assert KEY not in curl and "$FIREWORKS_API_KEY" in curl
    run = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120, check=True, env=env)
    chunks = [json.loads(x[6:]) for x in run.stdout.splitlines() if x.startswith("data: ") and x != "data: [DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == shown

    page.get_by_role("button", name="Copy as Python").click()
    py = page.evaluate("() => navigator.clipboard.readText()")
    assert KEY not in py and 'os.environ["FIREWORKS_API_KEY"]' in py
    run = subprocess.run([sys.executable, "-c", py], capture_output=True, text=True, timeout=120, check=True,
                         env=env)
    assert "chat.completion.chunk" in run.stdout and "[DONE]" in run.stdout
    shot(page, "4b-copied-without-key")
    assert csp_errors == []


def test_wrong_key_is_a_clear_401(key_server, page: Page) -> None:
    page.goto(key_server.url + "/")
    banner = page.locator("#banner")
    expect(banner).to_contain_text("requires an API key")
    shot(page, "5-key-required")
    page.get_by_label("API key").fill("wrong-key")
    page.get_by_label("API key").press("Tab")
    expect(banner).to_contain_text("401 Unauthorized: the API key you provided is invalid")
    page.get_by_label("Message", exact=True).fill("hello")
    page.get_by_role("button", name="Send").click()
    expect(banner).to_contain_text("401 Unauthorized")
    expect(page.locator(".msg.error")).to_contain_text("the API key you provided is invalid")
    shot(page, "6-unauthorized")
    page.get_by_label("API key").fill(KEY)
    page.get_by_label("API key").press("Tab")
    expect(page.locator("#model option")).to_have_text([MODEL_ID])
    set_greedy(page, 4)
    page.get_by_label("Message", exact=True).fill("hello")
    page.get_by_role("button", name="Send").click()
    wait_done(page)
    expect(banner).to_be_hidden()
    assert page.locator(".msg.assistant:not(.error) .body").last.inner_text()


def test_schema_is_checked_before_sending(smol_server, page: Page) -> None:
    open_page(page, smol_server)
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if "/v1/chat" in r.url else None)
    page.select_option("#rf-type", "json_schema")
    page.fill("#rf-body", '{"type": "object", "properties": {"city": {"type": "text"}}}')
    page.get_by_label("Message", exact=True).fill("Where is the Eiffel tower?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#rf-error")).to_contain_text('schema.properties.city.type "text"')
    page.fill("#rf-body", '{"type": "object", ')
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#rf-error")).to_contain_text("not valid JSON")
    shot(page, "7-schema-error")
    assert sent == [] and page.locator(".msg").count() == 0

    page.fill("#rf-body", json.dumps({"type": "object", "properties": {"city": {"type": "string"}},
                                      "required": ["city"], "additionalProperties": False}))
    set_greedy(page, 30)
    page.get_by_role("button", name="Send").click()
    wait_done(page)
    assert len(sent) == 1
    assert last_request(page)["body"]["response_format"]["type"] == "json_schema"
    assert json.loads(page.locator(".msg.assistant .body").last.inner_text()) == {"city": "Paris"}


def test_completion_mode_on_a_narrow_window(smol_server, page: Page) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    open_page(page, smol_server)
    page.get_by_text("Completion", exact=True).click()
    expect(page.locator("#system-box")).to_be_hidden()
    set_greedy(page, 8)
    page.get_by_label("Prompt", exact=True).fill("The capital of France is")
    page.get_by_role("button", name="Send").click()
    wait_done(page)
    req = last_request(page)
    assert req["url"] == "/v1/completions" and req["body"]["prompt"] == "The capital of France is"
    ref = httpx.post(smol_server.url + "/v1/completions", timeout=120,
                     json={"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 8,
                           "temperature": 0}).json()
    out = page.locator(".msg.completion .body").last.inner_text()
    assert out == "The capital of France is" + ref["choices"][0]["text"]
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    shot(page, "8-narrow-completion")


def test_stop_ends_the_generation_on_the_server(smol_server, page: Page) -> None:
    open_page(page, smol_server)
    wait_idle(smol_server)
    page.fill("#max_tokens", "4000")
    page.get_by_label("ignore_eos").check()
    page.get_by_label("Message", exact=True).fill("Tell me a very long story.")
    page.get_by_role("button", name="Send").click()
    answer = page.locator(".msg.assistant .body").last
    page.wait_for_function("() => document.querySelector('.msg.assistant .body').textContent.length > 40")
    assert smol_server.engine.has_work
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#send")).to_be_enabled()
    wait_idle(smol_server, timeout=10)  # the fetch was aborted, so the server aborted the sequence
    shown = answer.inner_text()
    assert 40 < len(shown) and page.locator(".finish").count() == 0
    page.wait_for_timeout(300)
    assert answer.inner_text() == shown  # nothing arrives after Stop
    assert last_request(page)["body"]["ignore_eos"] is True


def test_page_is_static_and_public(key_server) -> None:
    """The page and its assets need no key and no network beyond this server."""
    r = httpx.get(key_server.url + "/", timeout=10)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    for src in ("/playground/app.js", "/playground/style.css"):
        assert httpx.get(key_server.url + src, timeout=10).status_code == 200
    assert "http" not in r.text.replace("http-equiv", "")  # nothing loaded from elsewhere
    assert httpx.get(key_server.url + "/v1/models", timeout=10).status_code == 401


def test_docs_run_swagger_ui_from_this_server_alone(key_server, page: Page) -> None:
    """/docs is Swagger UI over /openapi.json, with every request to this server and no CSP violation:
    it lists the operations and "try it out" reaches the API."""
    csp_errors = csp_violations(page)
    origins: set[str] = set()
    page.on("request", lambda r: origins.add(r.url.split("/")[2]))
    page.goto(key_server.url + "/docs")
    ops = page.locator(".opblock-summary-path")
    expect(ops.filter(has_text="/v1/completions").first).to_be_visible(timeout=30_000)
    assert ops.count() > 20
    page.locator("#operations-default-list_models_v1_models_get, .opblock-get:has-text('/v1/models')").first.click()
    page.get_by_role("button", name="Try it out").first.click()
    page.get_by_role("button", name="Execute").first.click()
    expect(page.locator(".live-responses-table tr.response .response-col_status").first).to_contain_text("401",
                                                                                              timeout=30_000)
    shot(page, "docs")
    assert origins == {key_server.url.split("/")[2]}, origins
    assert csp_errors == []


def test_a_defined_function_is_called_streamed_and_its_result_sent_back(smol_server, page: Page) -> None:
    open_page(page, smol_server)
    set_greedy(page, 64)
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if "/v1/chat" in r.url else None)
    page.select_option("#tool-choice", "named")
    page.get_by_label("function name").fill("get_weather")
    page.get_by_label("description").fill("Get the current weather in a city.")
    page.fill("#tool-parameters", '{"type": "object", "properties": {"city": {"type": "text"}}}')
    page.get_by_label("Message", exact=True).fill("What is the weather like in Paris?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#tool-error")).to_contain_text('tools: parameters.properties.city.type "text"')
    page.get_by_label("function name").fill("get weather!")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#tool-error")).to_contain_text("function name")
    assert sent == []
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
              "required": ["city", "unit"], "additionalProperties": False}
    page.get_by_label("function name").fill("get_weather")
    page.fill("#tool-parameters", json.dumps(schema))
    page.evaluate("""() => {
        window.__args = [];
        new MutationObserver(() => {
            const a = document.querySelector('.msg.assistant .call-args');
            if (a && window.__args[window.__args.length - 1] !== a.textContent) window.__args.push(a.textContent);
        }).observe(document.getElementById('transcript'), {childList: true, subtree: true, characterData: true});
    }""")
    page.get_by_role("button", name="Send").click()
    wait_done(page)
    shot(page, "9-tool-call")
    req = last_request(page)
    assert req["body"]["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city.", "parameters": schema}}]
    assert req["body"]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}

    # The page shows the call the server makes for the same request unstreamed: name and arguments.
    body = dict(req["body"], stream=False)
    body.pop("stream_options")
    ref = httpx.post(smol_server.url + req["url"], json=body, timeout=120).json()["choices"][0]
    assert ref["finish_reason"] == "tool_calls" and len(ref["message"]["tool_calls"]) == 1
    want = ref["message"]["tool_calls"][0]["function"]
    answer = page.locator(".msg.assistant").last
    expect(answer.locator(".call-name")).to_have_text([want["name"]])
    assert answer.locator(".call-args").inner_text() == want["arguments"]
    jsonschema.validate(json.loads(want["arguments"]), schema)
    expect(answer.locator(".finish")).to_have_text("finish_reason: tool_calls")
    seen = page.evaluate("() => window.__args")
    assert len(seen) >= 3 and seen[-1] == want["arguments"], f"the arguments did not stream in: {seen}"

    # The next message is the call's result, sent back as a tool message; with tool_choice "none" the
    # model answers in text.
    expect(page.get_by_label("Message", exact=True)).to_have_attribute("placeholder", re.compile("^Result of get_weather"))
    page.select_option("#tool-choice", "none")
    page.get_by_label("Message", exact=True).fill("It is 21 degrees and sunny.")
    page.get_by_role("button", name="Send").click()
    wait_done(page)
    shot(page, "10-tool-result-answered")
    messages = last_request(page)["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    call = messages[1]["tool_calls"][0]
    assert messages[1]["content"] is None and call["function"] == want and call["id"].startswith("call_")
    assert messages[2] == {"role": "tool", "tool_call_id": call["id"], "content": "It is 21 degrees and sunny."}
    assert last_request(page)["body"]["tool_choice"] == "none"
    final = page.locator(".msg.assistant").last
    assert final.locator(".body").inner_text().strip() and final.locator(".call").count() == 0
    expect(page.locator(".msg.tool .role")).to_have_text(["tool · get_weather"])
