"""A model's chat template (Jinja), rendered the way transformers' `apply_chat_template` renders it.

The template comes from the checkpoint (GGUF `tokenizer.chat_template`, or `tokenizer_config.json` /
`chat_template.jinja` beside a tokenizer.json; see ember/tokenizer.py). Templates are user-supplied code
from a model file, so they run in Jinja's immutable sandbox: no attribute writes, no unsafe calls.
The environment matches transformers' (trim_blocks, lstrip_blocks, loop controls, a `tojson` filter that
keeps non-ASCII text, `raise_exception`, `strftime_now`), because the model was trained on exactly the
text transformers renders and the token ids must come out the same.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

from ember.errors import InvalidRequest
from ember.tokenizer import Tokenizer


class TemplateRaised(Exception):
    """`raise_exception(...)` called by the template: the conversation breaks one of the model's rules."""


def _raise_exception(message: str) -> None:
    raise TemplateRaised(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters and ASCII-escapes text; templates expect plain JSON.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@dataclass(frozen=True)
class Rendered:
    text: str
    token_ids: list[int]


class ChatTemplate:
    """One model's compiled template plus the special-token names templates refer to."""

    def __init__(self, source: str, tokenizer: Tokenizer) -> None:
        self.source = source
        self.tokenizer = tokenizer
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateError as e:
            raise InvalidRequest(f"the model's chat template does not compile: {e}", param="messages",
                                 code="bad_chat_template") from e
        self._special = {name: tokenizer.id_to_piece(i)
                         for name, i in (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id))
                         if i is not None}

    @property
    def supports_tools(self) -> bool:
        """Whether the template renders a `tools` list itself (else ember's generic tool prompt does)."""
        return "tools" in self.source

    def _context(self, tools: list[dict[str, Any]] | None) -> dict[str, Any]:
        # As transformers: `tools` is always defined, None when no tools are given.
        return dict(self._special, tools=tools or None)

    def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool,
               continue_final_message: bool = False, tools: list[dict[str, Any]] | None = None) -> str:
        try:
            text = self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **self._context(tools))
        except TemplateRaised as e:
            raise InvalidRequest(f"the model's chat template refused the conversation: {e}",
                                 param="messages") from e
        except (jinja2.TemplateError, TypeError, ValueError) as e:
            raise InvalidRequest(f"the model's chat template failed on these messages: {e}",
                                 param="messages") from e
        if continue_final_message:
            text = self._cut_after_final(text, messages, add_generation_prompt, tools)
        return text

    def _cut_after_final(self, text: str, messages: list[dict[str, Any]], add_generation_prompt: bool,
                         tools: list[dict[str, Any]] | None) -> str:
        """The prompt up to the end of the final message's content, so the model continues it.

        Where the content starts is found by rendering once more with the content replaced by a marker no
        user can guess: a search for the content itself could land in what the template writes after it
        (a final message "<" matched the "<" of "<|im_end|>", and the prompt gained a character)."""
        content = messages[-1].get("content") or ""
        marker = f"\ue000{secrets.token_hex(8)}\ue001"
        try:
            marked = self._template.render(messages=[*messages[:-1], dict(messages[-1], content=marker)],
                                           add_generation_prompt=add_generation_prompt, **self._context(tools))
        except (TemplateRaised, jinja2.TemplateError, TypeError, ValueError):
            marked = ""
        at = marked.find(marker)
        if at >= 0 and text.startswith(marked[:at]):
            rest = text[at:]
            for c in (content, content.strip()):
                if c and rest.startswith(c):
                    return text[:at] + c
        return _cut_after_final_message(text, content)

    def encode(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool,
               continue_final_message: bool = False, safe: bool = False,
               tools: list[dict[str, Any]] | None = None) -> Rendered:
        """The rendered prompt and its ids. `safe`: special-token text inside a message stays text (only the
        template's own special tokens become special ids), so a user cannot forge a turn."""
        kw: dict[str, Any] = {"add_generation_prompt": add_generation_prompt,
                              "continue_final_message": continue_final_message, "tools": tools}
        text = self.render(messages, **kw)
        if safe:
            return Rendered(text, self._encode_safe(text, self._content_spans(text, messages, kw)))
        # The template writes BOS itself when the model wants one (as in transformers, which encodes the
        # rendered text without special tokens): adding it again would double it.
        return Rendered(text, self.tokenizer.encode(text, add_special_tokens=False))

    # -- safe tokenization -----------------------------------------------------------------------------

    @cached_property
    def _special_pattern(self) -> re.Pattern[str] | None:
        specials = sorted((t.content for t in self.tokenizer.hf.get_added_tokens_decoder().values() if t.special),
                          key=len, reverse=True)
        return re.compile("|".join(map(re.escape, specials))) if specials else None

    @cached_property
    def _plain(self) -> HFTokenizer:
        """A copy of the tokenizer that reads special-token text as ordinary text (set once, never changed)."""
        plain = HFTokenizer.from_str(self.tokenizer.hf.to_str())
        plain.encode_special_tokens = True
        return plain

    def _content_spans(self, text: str, messages: list[dict[str, Any]], kw: dict[str, Any]) -> list[tuple[int, int]]:
        """Where each message's text sits in the rendered prompt.

        The template is rendered again with each content replaced by a marker no user can guess; putting
        the contents back where the markers are must give the prompt exactly (as written, or stripped as
        many templates do), else the template changed the text and the message cannot be kept apart.
        """
        nonce = secrets.token_hex(8)
        # A message without text (an assistant turn of tool calls only) has nothing to keep apart.
        marked = [dict(m, content=f"\ue000{nonce}:{i}\ue001") if m.get("content") else m
                  for i, m in enumerate(messages)]
        pieces = re.split(f"\ue000{nonce}:([0-9]+)\ue001", self.render(marked, **kw))
        for strip in (False, True):
            out, spans = [pieces[0]], []
            pos = len(pieces[0])
            for k in range(1, len(pieces), 2):
                content = messages[int(pieces[k])].get("content") or ""
                content = content.strip() if strip else content
                spans.append((pos, pos + len(content)))
                out += [content, pieces[k + 1]]
                pos += len(content) + len(pieces[k + 1])
            if "".join(out) == text:
                return spans
        raise InvalidRequest("safe_tokenization: the model's chat template rewrites message text, so messages "
                             "cannot be kept apart from it", param="safe_tokenization")

    def _encode_safe(self, text: str, spans: list[tuple[int, int]]) -> list[int]:
        """`tokenizers` cuts the text at every special token and encodes the pieces between apart; here only
        the template's special tokens cut it, so for messages without special-token text the ids are the
        same as plain encoding, and inside a message such text is encoded as the characters it is."""
        ids: list[int] = []
        start = 0
        for m in self._special_pattern.finditer(text) if self._special_pattern else ():
            if any(a < m.end() and m.start() < b for a, b in spans):
                continue  # written (at least in part) by the user: text
            if m.start() > start:
                ids.extend(self._plain.encode(text[start:m.start()], add_special_tokens=False).ids)
            ids.append(self.tokenizer.hf.token_to_id(m.group()))
            start = m.end()
        if start < len(text):
            ids.extend(self._plain.encode(text[start:], add_special_tokens=False).ids)
        return ids


def _cut_after_final_message(text: str, final: str) -> str:
    """Drop what the template writes after the last message (its end-of-turn), so the model continues it.

    Templates often strip message content, so the content is searched for stripped; trailing whitespace the
    user wrote survives only if the template kept it.
    """
    core = final.strip()
    at = text.rfind(core)
    if at < 0 or not core:
        raise InvalidRequest("the final assistant message does not appear in the rendered chat template, so it "
                             "cannot be continued", param="messages")
    kept = final.lstrip()
    if text[at:at + len(kept)] == kept:
        return text[:at + len(kept)]
    return text[:at + len(core)]


def chat_template_of(tokenizer: Tokenizer) -> ChatTemplate | None:
    """The model's template, or None when the checkpoint carries none."""
    src = tokenizer.chat_template
    return ChatTemplate(src, tokenizer) if src else None
