"""How a model family writes a tool call: its markers, the grammar that makes a call valid by
construction, and the parser that reads calls back (ember/pipeline/tool_stream.py).

Registry: one format per family, picked from the chat template. The Hermes style
(`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`) is what Qwen 2.5/3 and Hermes templates
emit, and ember's generic tool prompt teaches it to models whose template knows no tools.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ember.engine.grammar import COMPACT_JSON
from ember.pipeline.chat_template import ChatTemplate
from ember.pipeline.tools import ToolCall, ToolMode, ToolSet
from ember.tokenizer import Tokenizer


@dataclass(frozen=True)
class ToolFormat:
    name: str
    open: str
    """The marker a call starts with."""
    close: str
    """The marker a call ends with."""
    arguments_key: str = "arguments"

    def render_call(self, call: ToolCall) -> str:
        """One call as the model writes it (the generic history shows earlier calls this way)."""
        try:
            args = json.dumps(json.loads(call.arguments), ensure_ascii=False)
        except ValueError:
            args = json.dumps(call.arguments, ensure_ascii=False)
        body = f'{{"name": {json.dumps(call.name, ensure_ascii=False)}, "{self.arguments_key}": {args}}}'
        return f"{self.open}\n{body}\n{self.close}"

    def call_schema(self, tools: ToolSet) -> dict:
        """The JSON of one call: `{"name": <a callable function>, "arguments": <its parameters>}`."""
        options = [{"type": "object",
                    "properties": {"name": {"const": t.name}, self.arguments_key: bounded(t.parameters)},
                    "required": ["name", self.arguments_key], "additionalProperties": False}
                   for t in tools.callable()]
        return {"anyOf": options, "x-guidance": COMPACT_JSON}

    def grammar(self, tools: ToolSet, tok: Tokenizer, max_calls: int | None = None) -> str:
        """A llguidance Lark grammar for the answer under `tools`' choice (never for ToolMode.NONE).

        A marker that is one token of the tokenizer (Qwen's `<tool_call>`) is named as that token
        (`<[id]>`): a string would let the model spell it out in pieces the template never shows it. In `auto`, free text runs
        until the opening marker appears; from there the call is constrained (a lazy lexeme, or the special
        token, which text can never contain). After the calls the turn ends."""
        if tools.mode == ToolMode.NONE:
            raise ValueError("tool_choice none has no grammar")
        open_tok, close_tok = _marker(self.open, tok), _marker(self.close, tok)
        body = f'"\\n" %json {json.dumps(self.call_schema(tools))} "\\n" {close_tok}'
        one = tools.mode == ToolMode.NAMED or not tools.parallel or max_calls == 1
        times = "*" if max_calls is None else f"{{0,{max_calls - 1}}}"
        more = "" if one else f' ("\\n" {open_tok} body){times}'
        lines = ["%llguidance {}"]
        if tools.mode == ToolMode.AUTO:
            lines.append("start: TAG_TEXT | trig calls")
            if open_tok.startswith("<["):
                lines.append(f"trig: TAG_TEXT {open_tok}")
            else:
                lines.append(f"trig[lazy]: TAG_TEXT {open_tok}")
            lines.append(f"calls: body{more}")
            lines.append("TAG_TEXT: /(.|\\n)*/")
        else:
            lines.append(f"start: {open_tok} body{more}")
        lines.append(f"body: {body}")
        return "\n".join(lines) + "\n"


NUMBER_LIMIT = 1e15
NUMBER_STEP = 1e-8
"""Numbers in a call's arguments, unless the schema bounds them itself: |x| <= 1e15 with at most 8 decimals
(llama.cpp's JSON grammars bound digits likewise). Sampled at temperature 1, a small model otherwise writes
digits (`4.5446356947981114719...`) until max_tokens cuts the call."""

_COMBINED = ("allOf", "$ref", "patternProperties", "unevaluatedProperties", "dependentSchemas", "if")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")


def bounded(schema: object) -> object:
    """The schema for the call grammar: numbers bounded (NUMBER_LIMIT, NUMBER_STEP), and an object with listed `properties` and no `additionalProperties`
    gets `additionalProperties: false` (as OpenAI's strict mode reads a function's parameters), at every
    depth. Left open, the grammar lets a small model invent keys after the ones it was asked for, until
    max_tokens cuts the call. The language only narrows: arguments still validate against the schema the
    client sent. Objects merged with others (allOf, $ref, pattern properties ...) are left as written, since
    closing one part would refuse keys another part defines."""
    if isinstance(schema, list):
        return [bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: bounded(v) for k, v in out[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [bounded(v) for v in out[key]]
    if isinstance(out.get("items"), (dict, list)):
        out["items"] = bounded(out["items"])
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out \
            and not any(k in out for k in _COMBINED):
        out["additionalProperties"] = False
    types = out.get("type")
    types = set(types) if isinstance(types, list) else {types}
    if types & {"number", "integer"}:
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -NUMBER_LIMIT
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = NUMBER_LIMIT
        if "number" in types and "multipleOf" not in out:
            out["multipleOf"] = NUMBER_STEP
    return out


def marker_token(text: str, tok: Tokenizer) -> int | None:
    """The id of the one token that is exactly the marker, or None when the tokenizer spells it in pieces."""
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) == 1 and tok.decode(ids) == text:
        return ids[0]
    return None


def _marker(text: str, tok: Tokenizer) -> str:
    """The Lark spelling of a marker: its token when it is one, else the string."""
    token = marker_token(text, tok)
    return json.dumps(text) if token is None else f"<[{token}]>"


def hidden_markers(fmt: ToolFormat, tok: Tokenizer) -> dict[int, str]:
    """The markers that are special tokens, by id: the detokenizer drops special tokens from the text, so
    whoever parses calls puts these back from the token ids."""
    out = {}
    for text in (fmt.open, fmt.close):
        token = marker_token(text, tok)
        if token is not None and tok.is_special(token):
            out[token] = text
    return out


HERMES = ToolFormat("hermes", "<tool_call>", "</tool_call>")

FORMATS: tuple[ToolFormat, ...] = (HERMES,)
GENERIC = HERMES
"""The format ember's own tool prompt teaches."""


@dataclass(frozen=True)
class ToolStyle:
    format: ToolFormat
    native: bool
    """The chat template renders the tools itself; otherwise ember's generic prompt does."""

    def max_calls(self, tools: ToolSet) -> int | None:
        """The most calls one answer may make. A model that was never taught tools (the generic prompt)
        tends to repeat a call it just wrote until max_tokens: it may call each function once, as many
        calls in all as there are functions. A model whose template knows tools ends its turn itself."""
        return None if self.native else max(1, len(tools.callable()))


def tool_style(template: ChatTemplate) -> ToolStyle:
    """The served model's way with tools: its template's own format when the template takes tools and
    writes calls in a format ember knows, else the generic prompt in the generic format."""
    if template.supports_tools:
        for fmt in FORMATS:
            if fmt.open in template.source:
                return ToolStyle(fmt, True)
    return ToolStyle(GENERIC, False)
