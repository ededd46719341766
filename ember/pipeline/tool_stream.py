"""Reading tool calls out of generated text as it arrives, one parser per choice.

The same parser serves streaming (fed each delta) and non-streaming (fed the whole text once), so the two
cannot disagree. Text that may be the start of a call's opening marker is held back, as stop strings are;
so is whitespace before a marker (it is layout, not content). Marker text never leaves as content.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field

from ember.pipeline.tool_format import ToolFormat


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    index: int
    text: str


StreamEvent = TextDelta | CallStart | ArgumentsDelta


@dataclass
class ParsedCall:
    name: str
    arguments: str = ""
    complete: bool = False


class _State(enum.Enum):
    TEXT = "text"
    HEADER = "header"
    ARGUMENTS = "arguments"
    TAIL = "tail"
    BROKEN = "broken"


def _held_prefix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


@dataclass
class ToolCallParser:
    fmt: ToolFormat
    calls: list[ParsedCall] = field(default_factory=list)
    content: str = ""
    """The text outside calls handed out so far."""
    _state: _State = _State.TEXT
    _buf: str = ""
    _depth: int = 0
    _in_string: bool = False
    _escape: bool = False
    _opened: str = ""
    """The text from the end of the last content handed out through the opening marker just seen: given
    back as content if no call comes of it, so a stream says what the answer says."""

    def __post_init__(self) -> None:
        key = re.escape(json.dumps(self.fmt.arguments_key))
        self._header = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*' + key + r"\s*:\s*")
        self._tail = "}" + self.fmt.close

    def feed(self, text: str) -> list[StreamEvent]:
        self._buf += text
        events: list[StreamEvent] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> list[StreamEvent]:
        """The text still held back (the generation ended): content when there was no call. After calls
        only layout may follow: anything else (a next call cut at its marker) leaves the answer
        incomplete."""
        events: list[StreamEvent] = []
        if not self.calls and self._state in (_State.HEADER, _State.BROKEN):
            # A marker with no call behind it (cut, or malformed): the whole answer is text.
            self._text(events, self._opened + self._buf)
            self._buf = ""
        elif self._state == _State.TEXT and self._buf:
            if self.calls:
                if self._buf.strip():
                    self._state = _State.BROKEN
            else:
                self._text(events, self._buf)
            self._buf = ""
        return events

    @property
    def complete(self) -> bool:
        """Every call that was started ended well-formed, and nothing but layout follows the last one
        (read after finish)."""
        return self._state == _State.TEXT and all(c.complete for c in self.calls)

    # -- states -------------------------------------------------------------------------------------

    def _text(self, events: list[StreamEvent], text: str) -> None:
        if text:
            self.content += text
            events.append(TextDelta(text))

    def _step(self, events: list[StreamEvent]) -> bool:
        """Advance over the buffer once; whether it can advance further."""
        if self._state == _State.TEXT:
            at = self._buf.find(self.fmt.open)
            if at >= 0:
                before = self._buf[:at]
                if before.strip():
                    self._text(events, before.rstrip())
                self._opened = before[len(before.rstrip()):] + self.fmt.open
                self._buf = self._buf[at + len(self.fmt.open):]
                self._state = _State.HEADER
                return True
            if self.calls:
                return False  # after calls only another call may come: held until it does or the end
            keep = _held_prefix(self._buf, self.fmt.open)
            out = self._buf[:len(self._buf) - keep].rstrip()
            if out:
                self._text(events, out)
                self._buf = self._buf[len(out):]
            return False
        if self._state == _State.HEADER:
            m = self._header.match(self._buf)
            if m is None:
                return False
            try:
                name = json.loads(m.group(1))
            except ValueError:
                self._state = _State.BROKEN
                return False
            self.calls.append(ParsedCall(name))
            events.append(CallStart(len(self.calls) - 1, name))
            self._buf = self._buf[m.end():]
            self._state = _State.ARGUMENTS
            self._depth, self._in_string, self._escape = 0, False, False
            return True
        if self._state == _State.ARGUMENTS:
            return self._arguments(events)
        if self._state == _State.TAIL:
            squeezed = "".join(self._buf.split())
            if squeezed.startswith(self._tail):
                # The close marker holds no whitespace: cut the buffer just after it.
                at = self._buf.find(self.fmt.close) + len(self.fmt.close)
                self._buf = self._buf[at:]
                self.calls[-1].complete = True
                self._state = _State.TEXT
                return True
            if not self._tail.startswith(squeezed):
                self._state = _State.BROKEN
            return False
        return False  # BROKEN: everything else is ignored; the answer is not calls

    def _arguments(self, events: list[StreamEvent]) -> bool:
        """Scan the arguments value (a JSON object) up to its matching close brace."""
        if self._depth == 0:
            self._buf = self._buf.lstrip()  # layout before the value
        i, buf = 0, self._buf
        end = None
        while i < len(buf):
            ch = buf[i]
            if self._depth == 0 and not self._in_string:
                if ch != "{":
                    self._state = _State.BROKEN
                    return False
                self._depth = 1
            elif self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    end = i + 1
                    break
            i += 1
        piece = buf[:end if end is not None else len(buf)]
        if piece:
            self.calls[-1].arguments += piece
            events.append(ArgumentsDelta(len(self.calls) - 1, piece))
        self._buf = buf[len(piece):]
        if end is None:
            return False
        self._state = _State.TAIL
        return True
