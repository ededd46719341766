"""A Hugging Face tokenizer.json without a decoder: ember supplies the one its model type implies (so the
grammar library, which reads the decoder to learn each token's bytes, can build its vocabulary), or
refuses the folder naming the file. Before, `ember serve` on such a folder died in start-up with
llguidance's "can't determine decoder type: None" traceback, and decoded byte-level pieces as `Ġ`/`Ã©`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from ember.engine.grammar import GrammarCompiler
from ember.errors import ModelLoadError
from ember.tokenizer import Tokenizer
from tests.harness import ServeProcess
from tests.tokenizer.conftest import gguf_tokenizer, write_sentencepiece_gguf
from tests.tokenizer.test_real_vocabularies import TEXTS


def _without_decoder(spec: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps({**spec, "decoder": None}), encoding="utf-8")
    return folder / "tokenizer.json"


def _check_same_as(original: HFTokenizer, tok: Tokenizer) -> None:
    for text in TEXTS:
        ids = original.encode(text, add_special_tokens=False).ids
        assert tok.encode(text, add_special_tokens=False) == ids
        assert tok.decode(ids) == original.decode(ids, skip_special_tokens=False)
    # llguidance reads every token's bytes from the decoder; it now builds, and a grammar compiles on it.
    grammars = GrammarCompiler(tok)
    # (a SentencePiece vocabulary writes the text with its dummy-prefix space: the regex allows it)
    matcher = grammars.matcher(grammars.compile("regex", r' ?"(yes|no)"'))
    assert matcher.consume_tokens(tok.encode('"no"', add_special_tokens=False))
    assert matcher.is_accepting()


def test_byte_level_bpe_gets_byte_level_decoder(qwen_dir: Path, tmp_path: Path) -> None:
    original = HFTokenizer.from_file(str(qwen_dir / "tokenizer.json"))
    spec = json.loads(original.to_str())
    tok = Tokenizer.from_file(_without_decoder(spec, tmp_path / "q"))
    assert tok.byte_level
    _check_same_as(original, tok)


def test_sentencepiece_normalizer_gets_its_decoder(mistral_model: Path, tmp_path: Path) -> None:
    # Mistral's vocabulary as transformers writes it (Prepend + Replace normalizer, byte fallback), less the decoder.
    original = gguf_tokenizer(write_sentencepiece_gguf(mistral_model, tmp_path / "m.gguf")).hf
    tok = Tokenizer.from_file(_without_decoder(json.loads(original.to_str()), tmp_path / "m"))
    _check_same_as(original, tok)


def test_metaspace_pre_tokenizer_gets_metaspace_decoder(tmp_path: Path) -> None:
    vocab = {"<unk>": 0, "\u2581": 1, **{c: i + 2 for i, c in enumerate("abcdehlorw")}}
    vocab |= {"\u2581h": 12, "\u2581he": 13, "\u2581hello": 14, "ll": 15, "llo": 16, "\u2581w": 17, "\u2581world": 18,
              "or": 19, "orld": 20, "ld": 21, "\u2581he" + "llo": 14}
    merges = [("\u2581", "h"), ("\u2581h", "e"), ("l", "l"), ("ll", "o"), ("\u2581he", "llo"), ("\u2581", "w"),
              ("o", "r"), ("l", "d"), ("or", "ld"), ("\u2581w", "orld")]
    original = HFTokenizer(models.BPE(vocab, merges, unk_token="<unk>"))
    original.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    spec = json.loads(original.to_str())
    tok = Tokenizer.from_file(_without_decoder(spec, tmp_path / "ms"))
    ids = tok.encode("hello world", add_special_tokens=False)
    assert ids == [14, 18] and tok.decode(ids) == "hello world"


def test_unknown_model_type_is_refused_naming_the_file(tmp_path: Path) -> None:
    wl = HFTokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    path = _without_decoder(json.loads(wl.to_str()), tmp_path / "wl")
    with pytest.raises(ModelLoadError, match=rf"{path}.*no decoder"):
        Tokenizer.from_file(path)


# -- end to end: `ember serve` on a Hugging Face folder whose tokenizer.json has no decoder -------------------

@pytest.fixture(scope="module")
def decoderless_folder(qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("hf") / "decoderless"
    spec = json.loads((qwen_dir / "tokenizer.json").read_text(encoding="utf-8"))
    _without_decoder(spec, folder)
    (folder / "tokenizer_config.json").write_text((qwen_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg = transformers.LlamaConfig(vocab_size=151669, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                                   tie_word_embeddings=True, eos_token_id=151645)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_serve_starts_and_answers(decoderless_folder: Path, ember_serve: Callable[..., ServeProcess]) -> None:
    import openai

    s = ember_serve("--model", str(decoderless_folder), "--kv-cache-mb", "16", timeout=600, interval=0.5)
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    prompt = "héllo wörld 🙂 <|im_end|>"
    r = client.completions.create(model="decoderless", prompt=prompt, max_tokens=2, temperature=0, echo=True)
    assert r.choices[0].text.startswith(prompt)  # the prompt's ids decode back to its text, bytes and all
    chat = client.chat.completions.create(
        model="decoderless", max_tokens=6, temperature=0, messages=[{"role": "user", "content": "Say yes"}],
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {"enum": ["yes", "no"]}}})
    assert chat.choices[0].message.content in ('"yes"', '"no"')
