// ember playground: plain JavaScript, no build step and nothing fetched from outside this server.
// Every request goes through buildRequest(), so "copy as curl / Python" reproduces exactly what was sent.
"use strict";

const $ = (id) => document.getElementById(id);

const ui = {
  messages: [],          // chat history: {role, content}, assistant tool_calls and tool results
  pendingCalls: [],      // calls of the last answer still waiting for a tool result: {id, name, arguments}
  lastRequest: null,     // {url, body} of the last request sent
  lastFinal: null,       // the final chunk of the last stream (usage, perf_metrics)
  controller: null,      // AbortController of the running request
  contextLength: null,
};

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function showBanner(text, kind) {
  const b = $("banner");
  b.textContent = text;
  b.className = "banner" + (kind === "info" ? " info" : "");
  b.hidden = !text;
}

async function errorText(resp) {
  let msg = resp.statusText;
  try {
    const body = await resp.json();
    msg = (body.error && body.error.message) || JSON.stringify(body);
  } catch (e) { /* not JSON: keep the status text */ }
  return `${resp.status} ${resp.status === 401 ? "Unauthorized" : resp.statusText}: ${msg}`;
}

// -- models ----------------------------------------------------------------------------------------

async function loadModels() {
  const resp = await fetch("/v1/models", { headers: headers() });
  if (resp.status === 401) {
    $("api-key").placeholder = "required";
    $("api-key").setAttribute("aria-invalid", "true");
    if ($("api-key").value.trim()) showBanner(await errorText(resp));
    else showBanner("This server requires an API key: enter it in the API key box above.", "info");
    return;
  }
  if (!resp.ok) { showBanner(await errorText(resp)); return; }
  $("api-key").removeAttribute("aria-invalid");
  const { data } = await resp.json();
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(...data.map((m) => {
    const o = new Option(m.id, m.id);
    o.dataset.context = m.context_length ?? "";
    o.dataset.chat = m.supports_chat;
    return o;
  }));
  if (chosen && data.some((m) => m.id === chosen)) select.value = chosen;
  onModelChange();
  showBanner("");
}

function onModelChange() {
  const o = $("model").selectedOptions[0];
  if (!o) return;
  ui.contextLength = o.dataset.context ? Number(o.dataset.context) : null;
  if (ui.contextLength) {
    $("max_tokens").max = ui.contextLength;
    $("max-tokens-hint").textContent = `1 – ${ui.contextLength}`;
  }
}

// -- the request -----------------------------------------------------------------------------------

function numberOr(id, fallback) {
  const v = $(id).value;
  return v === "" ? fallback : Number(v);
}

function responseFormat() {
  const type = $("rf-type").value;
  const text = $("rf-body").value.trim();
  if (type === "text") return null;
  if (type === "json_object") return { type };
  if (type === "grammar") {
    if (!text) throw new Error("response_format: the grammar is empty");
    return { type, grammar: text };
  }
  const schema = validateSchema(text, "response_format", "schema");
  return { type, json_schema: { name: "playground", schema } };
}

// A light structural check so a mistyped schema is caught here, not by a 400 from the server. `field`
// names the request field in the message, `root` the schema's own path.
const SCHEMA_TYPES = new Set(["object", "array", "string", "number", "integer", "boolean", "null"]);
function validateSchema(text, field, root) {
  let schema;
  try {
    schema = JSON.parse(text);
  } catch (e) {
    throw new Error(`${field}: the JSON schema is not valid JSON (${e.message})`);
  }
  if (typeof schema !== "object" || schema === null || Array.isArray(schema)) {
    throw new Error(`${field}: a JSON schema must be an object`);
  }
  const walk = (node, path) => {
    if (typeof node !== "object" || node === null) return;
    if ("type" in node) {
      const types = Array.isArray(node.type) ? node.type : [node.type];
      for (const t of types) {
        if (!SCHEMA_TYPES.has(t)) throw new Error(`${field}: ${path}.type "${t}" is not a JSON Schema type`);
      }
    }
    if ("properties" in node && (typeof node.properties !== "object" || Array.isArray(node.properties))) {
      throw new Error(`${field}: ${path}.properties must be an object`);
    }
    if ("required" in node && !Array.isArray(node.required)) {
      throw new Error(`${field}: ${path}.required must be an array`);
    }
    for (const [k, v] of Object.entries(node.properties || {})) walk(v, `${path}.properties.${k}`);
    if (node.items) walk(node.items, `${path}.items`);
  };
  walk(schema, root);
  return schema;
}

// The function defined in the Tools box, as `tools` and `tool_choice`; null when no tools are sent.
const FUNCTION_NAME = /^[A-Za-z0-9_-]{1,64}$/;
class ToolError extends Error {}
function toolsRequest() {
  const choice = $("tool-choice").value;
  if (!choice) return null;
  const name = $("tool-name").value.trim();
  if (!FUNCTION_NAME.test(name)) {
    throw new ToolError("tools: the function name must be 1 to 64 letters, digits, _ or -");
  }
  const fn = { name };
  const description = $("tool-description").value.trim();
  if (description) fn.description = description;
  const text = $("tool-parameters").value.trim();
  if (text) {
    let parameters;
    try {
      parameters = validateSchema(text, "tools", "parameters");
    } catch (e) {
      throw new ToolError(e.message);
    }
    if (parameters.type !== "object") throw new ToolError('tools: parameters must be a schema of "type": "object"');
    fn.parameters = parameters;
  }
  const toolChoice = choice === "named" ? { type: "function", function: { name } } : choice;
  return { tools: [{ type: "function", function: fn }], tool_choice: toolChoice };
}

function buildRequest(input) {
  const body = { model: $("model").value, stream: true };
  if (mode() === "chat") {
    const messages = [];
    const system = $("system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...ui.messages, nextMessage(input));
    body.messages = messages;
    const tools = toolsRequest();
    if (tools) Object.assign(body, tools);
  } else {
    body.prompt = input;
  }
  body.temperature = Number($("temperature").value);
  body.max_tokens = numberOr("max_tokens", 256);
  body.top_p = Number($("top_p").value);
  const topK = numberOr("top_k", 0);
  if (topK) body.top_k = topK;
  const minP = Number($("min_p").value);
  if (minP) body.min_p = minP;
  const typical = Number($("typical_p").value);
  if (typical !== 1) body.typical_p = typical;
  const rep = Number($("repetition_penalty").value);
  if (rep !== 1) body.repetition_penalty = rep;
  const freq = Number($("frequency_penalty").value);
  if (freq) body.frequency_penalty = freq;
  const pres = Number($("presence_penalty").value);
  if (pres) body.presence_penalty = pres;
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("ignore_eos").checked) body.ignore_eos = true;
  const stop = $("stop").value.split("\n").filter((s) => s.length > 0);
  if (stop.length) body.stop = stop.slice(0, 4);
  if ($("logprobs").checked) {
    body.logprobs = true;
    body.top_logprobs = numberOr("top_logprobs", 3);
  }
  const rf = responseFormat();
  if (rf) body.response_format = rf;
  body.perf_metrics_in_response = true;
  body.stream_options = { include_usage: true };
  const url = mode() === "chat" ? "/v1/chat/completions" : "/v1/completions";
  return { url, body };
}

// The message the composer's text becomes: the result of the first call still waiting for one, else
// the user's turn.
function nextMessage(input) {
  return nextMessageFor(ui.pendingCalls[0], input);
}

function nextMessageFor(call, input) {
  return call ? { role: "tool", tool_call_id: call.id, content: input } : { role: "user", content: input };
}

// -- transcript ------------------------------------------------------------------------------------

function addMessage(role, text, title) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = title || role;
  div.append(label);
  const body = document.createElement("span");
  body.className = "body";
  if (text) body.textContent = text;
  div.append(body);
  $("transcript").append(div);
  div.scrollIntoView({ block: "end" });
  return body;
}

// One tool call of an answer: its name, and its arguments as they stream in.
function addCall(out, name) {
  const msg = out.parentElement;
  let calls = msg.querySelector(".calls");
  if (!calls) {
    calls = document.createElement("div");
    calls.className = "calls";
    msg.append(calls);
  }
  const div = document.createElement("div");
  div.className = "call";
  const n = document.createElement("span");
  n.className = "call-name";
  n.textContent = name;
  const args = document.createElement("code");
  args.className = "call-args";
  div.append(n, args);
  calls.append(div);
  return args;
}

function showPendingCall() {
  const call = ui.pendingCalls[0];
  $("input").placeholder = call
    ? `Result of ${call.name}(${call.arguments}), sent back as a tool message…`
    : "Type a message… (Ctrl+Enter to send)";
}

// Probability 1 is green, 0 red; light enough to read black text on.
function probColour(p) {
  return `hsl(${Math.round(120 * p)}, 75%, ${88 - 8 * (1 - p)}%)`;
}

function pct(logprob) {
  return (100 * Math.exp(logprob)).toFixed(1) + "%";
}

function tokenSpan(entry) {
  const span = document.createElement("span");
  span.className = "tok";
  span.tabIndex = 0;
  span.textContent = entry.token;
  const p = Math.exp(entry.logprob);
  span.style.background = probColour(p);
  span.dataset.prob = p.toFixed(4);
  span.tok = entry;
  span.setAttribute("aria-label", `token ${JSON.stringify(entry.token)}, probability ${pct(entry.logprob)}`);
  return span;
}

function showTooltip(span) {
  const entry = span.tok;
  const tip = $("tooltip");
  const rows = [[entry.token, entry.logprob, true]];
  for (const alt of entry.top_logprobs || []) {
    if (alt.token !== entry.token) rows.push([alt.token, alt.logprob, false]);
  }
  rows.sort((a, b) => b[1] - a[1]);
  const table = document.createElement("table");
  for (const [tok, lp, chosen] of rows) {
    const tr = table.insertRow();
    if (chosen) tr.className = "chosen";
    tr.insertCell().textContent = JSON.stringify(tok);
    const c = tr.insertCell();
    c.className = "p";
    c.textContent = pct(lp);
  }
  const head = document.createElement("span");
  head.className = "head";
  head.textContent = "top alternatives";
  tip.replaceChildren(head, table);
  tip.hidden = false;
  const r = span.getBoundingClientRect();
  const top = r.bottom + 6 + tip.offsetHeight > window.innerHeight ? r.top - tip.offsetHeight - 6 : r.bottom + 6;
  tip.style.top = Math.max(4, top) + "px";
  tip.style.left = Math.max(4, Math.min(r.left, window.innerWidth - tip.offsetWidth - 4)) + "px";
}

function hideTooltip() { $("tooltip").hidden = true; }

// -- metrics ---------------------------------------------------------------------------------------

function setMetric(id, value) { $(id).textContent = value; }

function resetMetrics() {
  for (const id of ["m-ttft", "m-tps", "m-prompt", "m-completion", "m-cached", "m-server-ttft"]) setMetric(id, "–");
}

// -- sending ---------------------------------------------------------------------------------------

async function send(event) {
  event.preventDefault();
  $("rf-error").textContent = "";
  $("tool-error").textContent = "";
  const input = $("input").value;
  if (!input.trim()) return;
  const isChat = mode() === "chat";
  // With several calls waiting, each result is kept until the last one, which sends them all.
  if (isChat && ui.pendingCalls.length > 1) {
    const call = ui.pendingCalls.shift();
    ui.messages.push(nextMessageFor(call, input));
    addMessage("tool", input, "tool · " + call.name);
    $("input").value = "";
    showPendingCall();
    return;
  }
  let req;
  try {
    req = buildRequest(input);
  } catch (e) {
    const tool = e instanceof ToolError;
    $(tool ? "tool-error" : "rf-error").textContent = e.message;
    $(tool ? "tool-parameters" : "rf-body").focus();
    return;
  }
  ui.lastRequest = req;
  showBanner("");
  resetMetrics();
  const sent = isChat ? req.body.messages[req.body.messages.length - 1] : null;
  const answered = isChat ? ui.pendingCalls[0] : null;
  let out;
  if (isChat) {
    addMessage(sent.role, input, answered ? "tool · " + answered.name : null);
    out = addMessage("assistant", "");
  } else {
    out = addMessage("completion", "");
    const prompt = document.createElement("span");
    prompt.className = "prompt";
    prompt.textContent = input;
    out.append(prompt);
  }
  $("input").value = "";
  setBusy(true);
  ui.controller = new AbortController();
  const t0 = performance.now();
  let tFirst = null;
  let chunks = 0;
  let text = "";
  let finish = null;
  const calls = [];  // by index: {id, name, arguments, view}
  try {
    const resp = await fetch(req.url, {
      method: "POST", headers: headers(), body: JSON.stringify(req.body), signal: ui.controller.signal,
    });
    if (!resp.ok) {
      const msg = await errorText(resp);
      out.parentElement.classList.add("error");
      out.textContent = msg;
      showBanner(msg);
      if (resp.status === 401) $("api-key").setAttribute("aria-invalid", "true");
      return;
    }
    for await (const event of sseEvents(resp)) {
      if (event.error) throw new Error(event.error.message || "the server reported an error");
      const choice = event.choices && event.choices[0];
      if (choice) {
        const piece = isChat ? (choice.delta && choice.delta.content) || "" : choice.text || "";
        const lps = choice.logprobs && choice.logprobs.content;
        for (const d of (isChat && choice.delta && choice.delta.tool_calls) || []) {
          let call = calls[d.index];
          if (!call) {
            call = calls[d.index] = { id: d.id, name: d.function.name, arguments: "" };
            call.view = addCall(out, call.name);
          }
          const more = (d.function && d.function.arguments) || "";
          call.arguments += more;
          call.view.textContent = call.arguments;
          if (tFirst === null) {
            tFirst = performance.now();
            setMetric("m-ttft", ((tFirst - t0) / 1000).toFixed(2) + " s");
          }
        }
        if (piece || lps) {
          if (tFirst === null) {
            tFirst = performance.now();
            setMetric("m-ttft", ((tFirst - t0) / 1000).toFixed(2) + " s");
          }
          chunks += lps ? lps.length : 1;
          text += piece;
          if (lps) {
            for (const entry of lps) out.append(tokenSpan(entry));
          } else {
            out.append(document.createTextNode(piece));
          }
          const secs = (performance.now() - tFirst) / 1000;
          if (secs > 0 && chunks > 1) setMetric("m-tps", ((chunks - 1) / secs).toFixed(1));
          out.parentElement.scrollIntoView({ block: "end" });
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      if (event.usage) showUsage(event, tFirst);
    }
    if (isChat) {
      if (answered) ui.pendingCalls.shift();
      const said = { role: "assistant", content: text };
      if (finish === "tool_calls") {  // calls cut by max_tokens are not calls: they stay out of the history
        said.content = text || null;
        said.tool_calls = calls.map((c) => ({ id: c.id, type: "function",
                                              function: { name: c.name, arguments: c.arguments } }));
      }
      ui.messages.push(sent, said);
      // A finished call waits for its result; a call cut by max_tokens came back as text (no id to answer).
      if (finish === "tool_calls") ui.pendingCalls = calls.map(({ id, name, arguments: a }) => ({ id, name, arguments: a }));
      showPendingCall();
    }
    if (finish) {
      const f = document.createElement("span");
      f.className = "finish";
      f.textContent = "finish_reason: " + finish;
      out.parentElement.append(f);
    }
  } catch (e) {
    if (e.name !== "AbortError") {
      out.parentElement.classList.add("error");
      out.append(document.createTextNode("\n" + e.message));
      showBanner(e.message);
    }
  } finally {
    setBusy(false);
    ui.controller = null;
  }
}

function showUsage(event, tFirst) {
  ui.lastFinal = event;
  const u = event.usage;
  setMetric("m-prompt", u.prompt_tokens);
  setMetric("m-completion", u.completion_tokens ?? "–");
  setMetric("m-cached", (u.prompt_tokens_details && u.prompt_tokens_details.cached_tokens) ?? 0);
  const perf = event.perf_metrics;
  if (perf && perf["server-time-to-first-token"] !== undefined) {
    setMetric("m-server-ttft", Number(perf["server-time-to-first-token"]).toFixed(3) + " s");
  }
  // The final figure is the server's decode rate (tokens after the first over the time after it), which
  // network and browser buffering cannot skew; while streaming, the page shows its own estimate.
  const decode = perf && perf["server-processing-time"] - perf["server-time-to-first-token"];
  if (decode > 0 && u.completion_tokens > 1) {
    setMetric("m-tps", ((u.completion_tokens - 1) / decode).toFixed(1));
  } else if (tFirst !== null && u.completion_tokens > 1) {
    const secs = (performance.now() - tFirst) / 1000;
    if (secs > 0) setMetric("m-tps", ((u.completion_tokens - 1) / secs).toFixed(1));
  }
}

async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

// -- copy as curl / Python -------------------------------------------------------------------------

function shellQuote(s) {
  return "'" + s.replace(/'/g, "'\\''") + "'";
}

function currentRequest() {
  if (ui.lastRequest) return ui.lastRequest;
  return buildRequest($("input").value || "Hello!");
}

// Snippets never hold the key itself (they get pasted into chats, tickets and shell history): they read
// it from $FIREWORKS_API_KEY where the page sends one.
const KEY_VAR = "FIREWORKS_API_KEY";

function snippetHeaders() {
  const h = headers();
  const hasKey = "Authorization" in h;
  delete h["Authorization"];
  return { plain: h, hasKey };
}

function curlSnippet(req) {
  const { plain, hasKey } = snippetHeaders();
  const lines = [`curl -sS${req.body.stream ? " -N" : ""} ${shellQuote(location.origin + req.url)}`];
  for (const [k, v] of Object.entries(plain)) lines.push(`  -H ${shellQuote(k + ": " + v)}`);
  if (hasKey) lines.push(`  -H "Authorization: Bearer $${KEY_VAR}"`);
  lines.push(`  -d ${shellQuote(JSON.stringify(req.body))}`);
  return lines.join(" \\\n");
}

function pythonSnippet(req) {
  const body = JSON.stringify(req.body, null, 2).replace(/\\/g, "\\\\").replace(/'''/g, "\\'\\'\\'");
  const { plain, hasKey } = snippetHeaders();
  const headersExpr = JSON.stringify(plain).replace(/}$/, hasKey
    ? `, "Authorization": "Bearer " + os.environ["${KEY_VAR}"]}` : "}");
  return [
    "import json",
    "import os",
    "import urllib.request",
    "",
    `body = json.loads('''${body}''')`,
    "req = urllib.request.Request(",
    `    ${JSON.stringify(location.origin + req.url)},`,
    "    data=json.dumps(body).encode(),",
    `    headers=${headersExpr},`,
    ")",
    "with urllib.request.urlopen(req) as resp:",
    "    for line in resp:",
    "        print(line.decode(), end=\"\")",
  ].join("\n");
}

async function copy(kind) {
  let text;
  try {
    const req = currentRequest();
    text = kind === "curl" ? curlSnippet(req) : pythonSnippet(req);
  } catch (e) {
    $("rf-error").textContent = e.message;
    return;
  }
  const snippet = $("snippet");
  snippet.textContent = text;
  snippet.hidden = false;
  snippet.dataset.kind = kind;
  try {
    await navigator.clipboard.writeText(text);
    $("copy-status").textContent = `Copied as ${kind === "curl" ? "curl" : "Python"}.`;
  } catch (e) {
    $("copy-status").textContent = "Clipboard unavailable: copy the snippet below.";
  }
}

// -- wiring ----------------------------------------------------------------------------------------

function bindRange(id) {
  const input = $(id);
  const out = $(id + "-val");
  const show = () => { out.textContent = input.value; };
  input.addEventListener("input", show);
  show();
}

function onModeChange() {
  const chat = mode() === "chat";
  $("system-box").hidden = !chat;
  $("tools-box").hidden = !chat;
  $("input").placeholder = chat ? "Type a message… (Ctrl+Enter to send)" : "Type a prompt to continue… (Ctrl+Enter to send)";
  $("input").setAttribute("aria-label", chat ? "Message" : "Prompt");
}

function onFormatChange() {
  const type = $("rf-type").value;
  const needsBody = type === "json_schema" || type === "grammar";
  $("rf-body").hidden = !needsBody;
  $("rf-body-label").hidden = !needsBody;
  $("rf-body-label").textContent = type === "grammar" ? "GBNF grammar" : "JSON schema";
  if (type === "json_schema" && !$("rf-body").value.trim()) {
    $("rf-body").value = JSON.stringify({
      type: "object", properties: { answer: { type: "string" } }, required: ["answer"],
    }, null, 2);
  }
  if (type === "grammar" && !$("rf-body").value.trim()) $("rf-body").value = 'root ::= "yes" | "no"';
  $("rf-error").textContent = "";
}

function onToolChoiceChange() {
  $("tool-def").hidden = !$("tool-choice").value;
  if (!$("tool-parameters").value.trim()) {
    $("tool-parameters").value = JSON.stringify({
      type: "object",
      properties: { city: { type: "string" }, unit: { type: "string", enum: ["celsius", "fahrenheit"] } },
      required: ["city", "unit"],
      additionalProperties: false,
    }, null, 2);
  }
  $("tool-error").textContent = "";
}

function init() {
  for (const id of ["temperature", "top_p", "min_p", "typical_p", "repetition_penalty", "frequency_penalty", "presence_penalty"]) {
    bindRange(id);
  }
  $("composer").addEventListener("submit", send);
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("composer").requestSubmit();
  });
  $("stop").addEventListener("click", () => ui.controller && ui.controller.abort());
  $("clear").addEventListener("click", () => {
    ui.messages = [];
    ui.pendingCalls = [];
    showPendingCall();
    $("transcript").replaceChildren();
    resetMetrics();
  });
  $("copy-curl").addEventListener("click", () => copy("curl"));
  $("copy-python").addEventListener("click", () => copy("python"));
  $("model").addEventListener("change", onModelChange);
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("ember-api-key", $("api-key").value);
    loadModels();
  });
  $("api-key").value = sessionStorage.getItem("ember-api-key") || "";
  for (const r of document.querySelectorAll('input[name="mode"]')) r.addEventListener("change", onModeChange);
  $("rf-type").addEventListener("change", onFormatChange);
  $("tool-choice").addEventListener("change", onToolChoiceChange);
  const transcript = $("transcript");
  for (const [ev, fn] of [["mouseover", showTooltip], ["focusin", showTooltip]]) {
    transcript.addEventListener(ev, (e) => { if (e.target.classList.contains("tok")) fn(e.target); });
  }
  for (const ev of ["mouseout", "focusout"]) {
    transcript.addEventListener(ev, (e) => { if (e.target.classList.contains("tok")) hideTooltip(); });
  }
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") hideTooltip(); });
  onModeChange();
  onFormatChange();
  onToolChoiceChange();
  loadModels().catch((e) => showBanner("cannot reach the server: " + e.message));
}

document.addEventListener("DOMContentLoaded", init);
