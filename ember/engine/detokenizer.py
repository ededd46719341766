"""Incremental detokenization: token ids leave the engine as text through here and nowhere else.

Two offsets per sequence (as in TGI/vLLM): `prefix` marks where the decoded context window begins and
`read` the first id not yet turned into text. Decoding ids[prefix:] and subtracting ids[prefix:read]
keeps tokenizer-specific leading spaces right. While the newest text ends in U+FFFD a multi-byte
character is still incomplete, so nothing is emitted until a later token completes it.

Stop strings are matched on the decoded text, across token boundaries. While running, the last
max(len(stop)) - 1 characters are held back because they could be the start of a stop string.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.tokenizer import Tokenizer

_CONTEXT_TOKENS = 5


@dataclass
class DetokenizerState:
    ids: list[int]
    prefix: int
    read: int
    stop: tuple[str, ...] = ()
    text: str = ""
    """Completion text decoded so far (truncated at a stop string once one is found)."""
    emitted: int = 0
    """Characters of `text` already handed out."""
    stopped: bool = False

    @classmethod
    def for_prompt(cls, prompt_ids: tuple[int, ...] | list[int], stop: tuple[str, ...]) -> DetokenizerState:
        """The state before the first generated token: decoding starts from the prompt's last few ids
        (for tokenizer-specific leading spaces). Needs no tokenizer."""
        ctx = list(prompt_ids[-_CONTEXT_TOKENS:])
        return cls(ids=ctx, prefix=0, read=len(ctx), stop=tuple(s for s in stop if s))

    @property
    def holdback(self) -> int:
        return max((len(s) for s in self.stop), default=1) - 1


class Detokenizer:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def append(self, st: DetokenizerState, token_id: int) -> bool:
        """Add one generated token; returns True when a stop string has just been found."""
        if st.stopped:
            return True
        st.ids.append(token_id)
        before = self._decode(st.ids[st.prefix : st.read])
        after = self._decode(st.ids[st.prefix :])
        if after.endswith("\ufffd") or len(after) < len(before):
            return False  # an incomplete UTF-8 sequence: wait for the next token
        new = after[len(before) :]
        st.prefix, st.read = st.read, len(st.ids)
        if not new:
            return False
        start = max(0, len(st.text) - max(0, st.holdback))
        st.text += new
        return self._check_stop(st, start)

    def _check_stop(self, st: DetokenizerState, start: int) -> bool:
        best = -1
        for s in st.stop:
            i = st.text.find(s, start)
            if i != -1 and (best == -1 or i < best):
                best = i
        if best == -1:
            return False
        st.text = st.text[:best]
        st.stopped = True
        return True

    def take(self, st: DetokenizerState, final: bool) -> str:
        """The text that is safe to send now; everything left when `final`."""
        end = len(st.text) if final or st.stopped else max(st.emitted, len(st.text) - st.holdback)
        out = st.text[st.emitted : end]
        st.emitted = end
        return out
