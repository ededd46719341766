"""The Hermes tool-call format: its grammar on the real SmolLM2 tokenizer (llguidance), its parser fed
whole and in every split, and the calls it writes back into a history."""

from __future__ import annotations

import json

import llguidance
import pytest

from ember.engine.grammar import GrammarCompiler
from ember.pipeline.tool_format import HERMES, bounded, hidden_markers, marker_token
from ember.pipeline.tool_stream import ArgumentsDelta, CallStart, TextDelta, ToolCallParser
from ember.pipeline.tools import ToolCall, ToolDef, ToolMode, ToolSet
from ember.tokenizer import Tokenizer

WEATHER = ToolDef("get_weather", "Weather in a city", json.dumps(
    {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
     "required": ["city"], "additionalProperties": False}))
TIME = ToolDef("get_time", None, json.dumps({"type": "object", "properties": {}}))

CALL_W = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa}r\\"is", "days": 2}}\n</tool_call>'
CALL_T = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'


@pytest.fixture(scope="module")
def tok(smol_checkpoint) -> Tokenizer:
    return smol_checkpoint.tokenizer


@pytest.fixture(scope="module")
def compiler(tok: Tokenizer) -> GrammarCompiler:
    return GrammarCompiler(tok)


def parse(text: str) -> tuple[ToolCallParser, list]:
    p = ToolCallParser(HERMES)
    events = p.feed(text) + p.finish()
    return p, events


# -- the parser -------------------------------------------------------------------------------------

def test_parser_reads_text_then_calls() -> None:
    p, events = parse("Let me look.\n" + CALL_W + "\n" + CALL_T)
    assert p.complete and p.content == "Let me look."
    assert [(c.name, c.arguments) for c in p.calls] == [
        ("get_weather", '{"city": "Pa}r\\"is", "days": 2}'), ("get_time", "{}")]
    assert isinstance(events[0], TextDelta) and isinstance(events[1], CallStart)


def test_parser_without_calls_returns_the_text_exactly() -> None:
    text = "Paris is sunny <tool and < less\n  "
    p, _ = parse(text)
    assert p.complete and not p.calls and p.content == text


def test_a_cut_call_is_not_complete() -> None:
    for cut in (CALL_W[:12], CALL_W[:30], CALL_W[:-3], CALL_W[:-14]):
        p, _ = parse(cut)
        assert not p.complete, cut


def test_a_marker_with_no_call_behind_it_streams_back_as_the_text() -> None:
    """Cut right after the marker (or the marker followed by no call header), the answer is text: what a
    stream hands out must add up to it, marker and the layout before it included."""
    for text in ("You can call:\n<tool_call>", "You can call:\n<tool_call>\n{\"nam", "<tool_call>oops"):
        p, events = parse(text)
        assert not p.complete and not p.calls
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == text == p.content


def test_a_next_call_cut_at_its_marker_leaves_the_answer_incomplete() -> None:
    p, events = parse(CALL_T + "\n<tool")
    assert not p.complete and not [e for e in events if isinstance(e, TextDelta)]
    p, _ = parse(CALL_T + "\n")
    assert p.complete


def test_a_malformed_call_is_not_complete() -> None:
    p, _ = parse('<tool_call>\n{"name": "x", "arguments": [1]}\n</tool_call>')
    assert not p.complete
    p, _ = parse('<tool_call>\n{"name": "x", "arguments": {}} trailing\n</tool_call>')
    assert not p.complete


@pytest.mark.parametrize("text", ["Sure.\n" + CALL_W + "\n" + CALL_T, CALL_T, "no call at all <tool_cal"])
def test_every_split_gives_the_same_answer(text: str) -> None:
    whole, _ = parse(text)
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1, 7):
            p = ToolCallParser(HERMES)
            events = p.feed(text[:i]) + p.feed(text[i:j]) + p.feed(text[j:]) + p.finish()
            assert (p.content, p.calls, p.complete) == (whole.content, whole.calls, whole.complete), (i, j)
            content = "".join(e.text for e in events if isinstance(e, TextDelta))
            args = ["".join(e.text for e in events if isinstance(e, ArgumentsDelta) and e.index == k)
                    for k in range(len(p.calls))]
            assert content == whole.content and args == [c.arguments for c in whole.calls]
            assert "<tool" not in content or not whole.calls


def test_arguments_stream_in_pieces_and_no_marker_leaks() -> None:
    p = ToolCallParser(HERMES)
    events = [e for ch in "Hi " + CALL_W for e in p.feed(ch)] + p.finish()
    pieces = [e for e in events if isinstance(e, ArgumentsDelta)]
    assert len(pieces) > 5 and "".join(e.text for e in pieces) == p.calls[0].arguments
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hi"


def test_render_call_is_what_the_parser_reads() -> None:
    text = HERMES.render_call(ToolCall("call_1", "get_weather", '{"city":"Oslo"}'))
    assert text == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    p, _ = parse(text)
    assert p.complete and json.loads(p.calls[0].arguments) == {"city": "Oslo"}


# -- the grammar ------------------------------------------------------------------------------------

def accepts(compiler: GrammarCompiler, tok: Tokenizer, grammar: str, text: str) -> bool:
    m = compiler.matcher(compiler.compile("lark", grammar, "tools"))
    ok = m.consume_tokens(tok.encode(text, add_special_tokens=False))
    return bool(ok) and not m.is_error() and m.is_accepting()


def test_required_grammar_takes_calls_only(compiler: GrammarCompiler, tok: Tokenizer) -> None:
    g = HERMES.grammar(ToolSet((WEATHER, TIME), ToolMode.REQUIRED), tok)
    assert accepts(compiler, tok, g, CALL_W.replace('Pa}r\\"is', "Paris"))
    assert accepts(compiler, tok, g, CALL_T + "\n" + CALL_T)
    assert not accepts(compiler, tok, g, "Hello")
    assert not accepts(compiler, tok, g, '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>')
    # arguments follow the function's schema, laid out compactly
    assert not accepts(compiler, tok, g, '<tool_call>\n{"name": "get_weather", "arguments": {"days": 2}}\n</tool_call>')
    assert not accepts(compiler, tok, g, '<tool_call>\n{"name": "get_time",\n "arguments": {}}\n</tool_call>')


def test_named_and_single_call_grammars(compiler: GrammarCompiler, tok: Tokenizer) -> None:
    named = HERMES.grammar(ToolSet((WEATHER, TIME), ToolMode.NAMED, forced="get_time"), tok)
    assert accepts(compiler, tok, named, CALL_T)
    assert not accepts(compiler, tok, named, CALL_T + "\n" + CALL_T)
    assert not accepts(compiler, tok, named, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "A"}}\n</tool_call>')
    single = HERMES.grammar(ToolSet((WEATHER, TIME), ToolMode.REQUIRED, parallel=False), tok)
    assert accepts(compiler, tok, single, CALL_T)
    assert not accepts(compiler, tok, single, CALL_T + "\n" + CALL_T)
    capped = HERMES.grammar(ToolSet((WEATHER, TIME), ToolMode.REQUIRED), tok, max_calls=2)
    assert accepts(compiler, tok, capped, CALL_T + "\n" + CALL_T)
    assert not accepts(compiler, tok, capped, CALL_T + "\n" + CALL_T + "\n" + CALL_T)


def test_auto_grammar_constrains_a_started_call(compiler: GrammarCompiler, tok: Tokenizer) -> None:
    g = HERMES.grammar(ToolSet((WEATHER, TIME), ToolMode.AUTO), tok)
    assert accepts(compiler, tok, g, "Just text, no call at all.")
    assert accepts(compiler, tok, g, "Checking.\n" + CALL_T)
    # once the marker is written, only a valid call may follow
    m = compiler.matcher(compiler.compile("lark", g, "tools"))
    assert m.consume_tokens(tok.encode("Checking. <tool_call>\n", add_special_tokens=False))
    assert not m.consume_tokens(tok.encode("Sorry", add_special_tokens=False))


def test_a_marker_that_is_one_special_token_is_named_as_the_token(tok: Tokenizer) -> None:
    # SmolLM2 spells <tool_call> in pieces but has <|im_start|> as one special token
    assert marker_token("<tool_call>", tok) is None
    fmt = type(HERMES)("special", "<|im_start|>", "<|im_end|>")
    g = fmt.grammar(ToolSet((TIME,), ToolMode.REQUIRED), tok)
    assert f"<[{tok.encode('<|im_start|>', add_special_tokens=False)[0]}]>" in g
    assert set(hidden_markers(fmt, tok).values()) == {"<|im_start|>", "<|im_end|>"}
    assert hidden_markers(HERMES, tok) == {}
    llguidance.grammar_from("lark", g)


def test_bad_arguments_schema_is_a_400_naming_tools(compiler: GrammarCompiler, tok: Tokenizer) -> None:
    from ember.errors import InvalidRequest
    bad = ToolDef("f", None, json.dumps({"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}}))
    with pytest.raises(InvalidRequest) as e:
        compiler.compile("lark", HERMES.grammar(ToolSet((bad,), ToolMode.REQUIRED), tok), "tools")
    assert e.value.param == "tools"


def test_parameters_without_additional_properties_take_no_invented_keys(compiler: GrammarCompiler,
                                                                         tok: Tokenizer) -> None:
    """A schema that leaves `additionalProperties` unset is read closed for the grammar (at every depth),
    so a small model cannot wander into keys nobody defined; a free-form object stays open."""
    open_schema = {"type": "object", "properties": {
        "city": {"type": "string"},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}}},
        "extra": {"type": "object"}}, "required": ["city"]}
    tool = ToolDef("get_weather", None, json.dumps(open_schema))
    g = HERMES.grammar(ToolSet((tool,), ToolMode.REQUIRED), tok)

    def call(args: str) -> str:
        return HERMES.render_call(ToolCall("call_0", "get_weather", args))

    assert accepts(compiler, tok, g, call('{"city": "Paris"}'))
    assert accepts(compiler, tok, g, call('{"city": "Paris", "extra": {"anything": 1}}'))
    assert not accepts(compiler, tok, g, call('{"city": "Paris", "type": "object"}'))
    assert not accepts(compiler, tok, g, call('{"city": "Paris", "where": {"lat": 1, "lon": 2}}'))
    assert bounded({"allOf": [{"properties": {"a": {}}}]}) == {"allOf": [{"properties": {"a": {}}}]}


def test_numbers_in_arguments_have_bounded_digits(compiler: GrammarCompiler, tok: Tokenizer) -> None:
    """At temperature 1 a small model wrote `"b": 4.54463569479811147191...` until max_tokens cut the
    call: unbounded numbers get |x| <= 1e15 and 8 decimals; a schema's own bounds stand."""
    schema = {"type": "object", "properties": {"a": {"type": "number"}, "n": {"type": "integer"},
                                               "p": {"type": "number", "minimum": 0, "exclusiveMaximum": 5}}}
    g = HERMES.grammar(ToolSet((ToolDef("add", None, json.dumps(schema)),), ToolMode.REQUIRED), tok)

    def call(args: str) -> str:
        return HERMES.render_call(ToolCall("call_0", "add", args))

    assert accepts(compiler, tok, g, call('{"a": 2.5, "n": -3, "p": 4.75}'))
    assert accepts(compiler, tok, g, call('{"a": 12345678.12345678}'))
    assert not accepts(compiler, tok, g, call('{"a": 4.544635694798}'))
    assert not accepts(compiler, tok, g, call('{"n": 10000000000000000000}'))
    assert not accepts(compiler, tok, g, call('{"p": 5}'))
