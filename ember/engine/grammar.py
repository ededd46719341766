"""Constrained decoding with llguidance: a grammar per request, a token mask per step.

`GrammarCompiler` belongs to one tokenizer: it builds llguidance's view of the vocabulary once (~0.2 s)
and validates each grammar once (an LRU cache keyed by its text), so a schema sent with every request
costs nothing after the first. Each constrained sequence holds its own `LLMatcher`; unconstrained
sequences hold none and cost nothing.
"""

from __future__ import annotations

import functools
import json
import threading
from typing import Any

import llguidance
import llguidance.numpy as llg_np
import numpy as np
import torch

from ember.errors import InvalidRequest
from ember.json_depth import check_depth, loads_bounded
from ember.tokenizer import Tokenizer

COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""llguidance's JSON options for every constrained JSON ember asks for: one space after `,` and `:` and
no other layout (json.dumps' spacing). Left free, a small model spends its budget on newlines between
keys and values until max_tokens cuts the answer."""
ANY_JSON_OBJECT = json.dumps({"type": "object", "x-guidance": COMPACT_JSON})


class GrammarCompiler:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ll: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()
        self.compile = functools.lru_cache(maxsize=256)(self._compile)

    @property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:  # the API thread and the engine thread may both ask first
            if self._ll is None:
                t = self._tokenizer
                self._ll = llguidance.LLTokenizer(t.hf.to_str(), n_vocab=t.vocab_size, eos_token=t.eos_id)
            return self._ll

    def _compile(self, kind: str, text: str, param: str = "response_format") -> str:
        """("json_schema" | "grammar" | "regex" | "lark", text) -> a validated llguidance grammar; a 400
        naming `param` (the request field the grammar came from) if invalid."""
        fmt = {"json_schema": "json_schema", "grammar": "grammar", "regex": "regex", "lark": "lark"}[kind]
        try:
            grammar = llguidance.grammar_from(fmt, text)
        except (ValueError, RuntimeError) as e:
            raise InvalidRequest(f"invalid {kind}: {e}", param=param) from e
        err = llguidance.LLMatcher.validate_grammar(grammar, self.ll_tokenizer)
        if err:
            raise InvalidRequest(f"invalid {kind}: {err}", param=param)
        # A grammar can be well-formed and still match nothing ("x ::= x"): its first mask stops the
        # matcher. Asked once per grammar here, it is a 400 instead of an empty 200.
        probe = self.matcher(grammar)
        llg_np.fill_next_token_bitmask(probe, np.zeros((1, (self._tokenizer.vocab_size + 31) // 32), np.int32))
        if probe.is_error():
            raise InvalidRequest(f"the {kind} matches no text at all", param=param)
        return grammar

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        m = llguidance.LLMatcher(self.ll_tokenizer, grammar)
        if m.is_error():
            raise InvalidRequest(f"invalid grammar: {m.get_error()}", param="response_format")
        return m


def response_format_grammar(rf: Any) -> tuple[str, str] | None:
    """A CompletionRequest.response_format -> (kind, text) for GrammarCompiler, or None for plain text."""
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        schema = rf.json_schema if rf.json_schema is not None else rf.schema_
        return "json_schema", ANY_JSON_OBJECT if schema is None else _schema_text(schema)
    if rf.type == "json_schema":
        schema = rf.json_schema if rf.json_schema is not None else rf.schema_
        if schema is None:
            raise InvalidRequest("response_format json_schema needs a schema under 'json_schema' or 'schema'",
                                 param="response_format")
        return "json_schema", _schema_text(schema)
    if not rf.grammar:
        raise InvalidRequest("response_format grammar needs a GBNF text under 'grammar'", param="response_format")
    return "grammar", rf.grammar


def _schema_text(schema: str | dict) -> str:
    if isinstance(schema, str):
        try:
            schema = loads_bounded(schema, "response_format")
        except json.JSONDecodeError as e:
            raise InvalidRequest(f"the JSON schema is not valid JSON: {e}", param="response_format") from e
    check_depth(schema, "response_format")
    if not isinstance(schema, dict):
        raise InvalidRequest("the JSON schema must be an object", param="response_format")
    # OpenAI's wrapper {"name": ..., "schema": {...}, "strict": ...} carries the schema one level down.
    if "schema" in schema and isinstance(schema["schema"], dict) and "type" not in schema:
        schema = schema["schema"]
    if "x-guidance" not in schema:  # a client's own llguidance options stand
        schema = {**schema, "x-guidance": COMPACT_JSON}
    return json.dumps(schema)


def apply_masks(logits: torch.Tensor, matchers: list[llguidance.LLMatcher | None]) -> None:
    """Set to -inf, in place, every token a row's grammar forbids next; rows without one are untouched."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return
    # llguidance.numpy, not llguidance.torch: importing the latter pulls in torch.compile (1.9 s of start-up)
    bitmask = np.full((len(rows), (logits.shape[1] + 31) // 32), -1, dtype=np.int32)
    for j, i in enumerate(rows):
        llg_np.fill_next_token_bitmask(matchers[i], bitmask, j)  # type: ignore[arg-type]
    allowed = unpack_bitmask(torch.from_numpy(bitmask).to(logits.device), logits.shape[1])
    sub = logits[rows]
    sub.masked_fill_(~allowed, float("-inf"))
    logits[rows] = sub


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[R, W] int32 words, bit b of word w = token 32w + b allowed -> [R, vocab_size] bool; W * 32 >=
    vocab_size (apply_masks sizes the mask from the logits).

    llguidance's own apply step is a torch.compile'd function: its first call compiled for 2-10 s on the
    engine thread, stalling every stream in the batch; these three ops cost ~0.1 ms per row.
    """
    bits = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    # An arithmetic shift copies the sign bit leftwards, which `& 1` discards: bit 31 reads right too.
    unpacked = (bitmask.unsqueeze(-1) >> bits) & 1
    return unpacked.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()
