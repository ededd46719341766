"""Gemma 3's tokenizer (a 262144-piece SentencePiece BPE without a dummy-prefix space, built from the GGUF's
scores) against the tokenizer transformers builds from the same file, and its chat template."""

from __future__ import annotations

from typing import Any

import pytest

from ember.errors import InvalidRequest
from ember.pipeline.chat_template import ChatTemplate
from ember.tokenizer import Tokenizer
from tests.model.test_tokenizer import STRINGS

GEMMA_STRINGS = [
    *STRINGS,
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text between<eos> specials<pad>",
    "no <start_of_turn but <end_of_turn> alone",
    "  two leading spaces, and    four inside",
    "\t\ttabs\tand\nnewlines\n\n\n\nmany",
    "1234567890 3.14159 -42 1e-10 0x1F",
    "∑ ∫ ≈ ≠ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ｆｕｌｌｗｉｄｔｈ",
    "    def f(x):\n\treturn x ** 2  # comment\n",
    "<h1>Title</h1>\n<p>Paragraph &amp; entity</p>",
    "x" * 300,
]


@pytest.fixture(scope="module")
def tok(gemma: Any) -> Tokenizer:
    return gemma.tokenizer


@pytest.mark.parametrize("text", GEMMA_STRINGS)
def test_encode_matches_transformers(tok: Tokenizer, gemma_hf_tokenizer: Any, text: str) -> None:
    assert tok.encode(text) == gemma_hf_tokenizer.encode(text)
    assert tok.encode(text, add_special_tokens=False) == gemma_hf_tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", GEMMA_STRINGS)
def test_decode_matches_transformers(tok: Tokenizer, gemma_hf_tokenizer: Any, text: str) -> None:
    ids = tok.encode(text)
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == gemma_hf_tokenizer.decode(ids, skip_special_tokens=skip)
    assert tok.decode(ids) == "<bos>" + text


@pytest.mark.parametrize("text", GEMMA_STRINGS)
def test_token_bytes_round_trip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode()


def test_special_ids(tok: Tokenizer, gemma_hf_tokenizer: Any) -> None:
    assert tok.vocab_size == 262144
    assert (tok.bos_id, tok.eos_id) == (2, 1) == (gemma_hf_tokenizer.bos_token_id, gemma_hf_tokenizer.eos_token_id)
    assert tok.add_bos and tok.encode("hi")[0] == 2
    # <eos> and <end_of_turn> end generation: an instruction-tuned Gemma ends its turn with the latter.
    assert tok.hf.id_to_token(106) == "<end_of_turn>"
    assert tok.stop_ids == frozenset({1, 106})
    assert tok.encode("<start_of_turn>", add_special_tokens=False) == [105]


# -- chat template: the file carries none, so ember supplies Gemma's turn format ----------------------------

def test_chat_template_renders_gemma_turns(tok: Tokenizer, gemma_hf_tokenizer: Any) -> None:
    template = ChatTemplate(tok.chat_template or "", tok)
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "  What is 2+2?\n"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": "And 3+3?"}]
    rendered = template.encode(messages, add_generation_prompt=True)
    expect = ("<bos><start_of_turn>user\nAnswer briefly.\n\nWhat is 2+2?<end_of_turn>\n"
              "<start_of_turn>model\n4<end_of_turn>\n<start_of_turn>user\nAnd 3+3?<end_of_turn>\n"
              "<start_of_turn>model\n")
    assert rendered.text == expect
    assert rendered.token_ids == gemma_hf_tokenizer.encode(expect, add_special_tokens=False)
    assert rendered.token_ids.count(2) == 1  # one BOS: the template's, not the tokenizer's as well
    plain = template.encode([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert plain.text == "<bos><start_of_turn>user\nHi<end_of_turn>\n"


def test_chat_template_refuses_non_alternating_turns(tok: Tokenizer) -> None:
    template = ChatTemplate(tok.chat_template or "", tok)
    with pytest.raises(InvalidRequest, match="alternate"):
        template.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                        add_generation_prompt=True)
