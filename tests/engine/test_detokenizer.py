"""Stop strings and incremental text, against a brute-force reference."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ember.engine.detokenizer import Detokenizer, DetokenizerState


class CharTokenizer:
    """Each id is a short string; a stand-in so the property test can explore many texts quickly."""

    PIECES = ["a", "b", "ab", "ba", "c", " ", "abc", "\n", "é"]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(self.PIECES[i] for i in ids)


def reference(ids: list[int], stops: tuple[str, ...]) -> tuple[str, bool]:
    """Generation halts at the first token after which some stop string occurs in the text."""
    text = ""
    for i in ids:
        text += CharTokenizer.PIECES[i]
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            return text[: min(hits)], True
    return text, False


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(0, len(CharTokenizer.PIECES) - 1), max_size=30),
       st.lists(st.text(alphabet="abc \né", min_size=1, max_size=4), max_size=4))
def test_stop_strings_match_reference(ids: list[int], stops: list[str]) -> None:
    d = Detokenizer(CharTokenizer())  # type: ignore[arg-type]
    st_ = DetokenizerState.for_prompt([], tuple(stops))
    streamed = ""
    stopped = False
    for t in ids:
        if d.append(st_, t):
            stopped = True
            break
        piece = d.take(st_, final=False)
        streamed += piece
        # Streaming never leaks a prefix of a stop string that later completes.
    streamed += d.take(st_, final=True)
    ref_text, ref_stopped = reference(ids, tuple(stops))
    if ref_stopped:
        assert stopped
        assert streamed == ref_text
        assert not any(s in streamed for s in stops)
    else:
        assert not stopped and streamed == ref_text
