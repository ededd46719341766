"""ember's GGUF container reader against gguf's own GGUFReader and dequantizers."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from ember.model.catalog import ModelRef
from ember.model.gguf_file import dequantize, read_gguf_file


def test_embedded_file_reads_as_gguf_reads_it(smol_ref: ModelRef) -> None:
    ours = read_gguf_file(smol_ref.path)
    ref = gguf.GGUFReader(smol_ref.path)
    want = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert ours.fields == want  # every key, and every element of the 49k-entry vocabulary arrays
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    kinds = set()
    for a, b in zip(ours.tensors, ref.tensors, strict=True):
        assert a.shape == tuple(int(d) for d in b.shape) and a.tensor_type == b.tensor_type
        assert np.array_equal(a.data, b.data)
        kinds.add(a.tensor_type)
        if a.name in ("token_embd.weight", "blk.0.ffn_down.weight", "blk.3.attn_norm.weight"):
            expect = np.asarray(gguf.quants.dequantize(b.data, b.tensor_type), dtype=np.float32)
            assert np.array_equal(dequantize(a), expect.reshape(dequantize(a).shape)), a.name
    assert {gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0,
            gguf.GGMLQuantizationType.F32} <= kinds


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1,
                                   gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F16])
def test_block_types_dequantize_as_gguf_does(tmp_path: Path, qtype: gguf.GGMLQuantizationType) -> None:
    w = np.random.default_rng(int(qtype)).standard_normal((8, 64)).astype(np.float32)
    path = tmp_path / "t.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_array("test.strings", ["a", "bé", ""])
    writer.add_float32("test.f", 0.5)
    packed = w.astype(np.float16) if qtype == gguf.GGMLQuantizationType.F16 else gguf.quants.quantize(w, qtype)
    writer.add_tensor("w", packed, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    f = read_gguf_file(path)
    assert f.fields["test.strings"] == ["a", "bé", ""] and f.fields["test.f"] == 0.5
    (t,) = f.tensors
    ref = gguf.GGUFReader(path).tensors[0]
    expect = np.asarray(gguf.quants.dequantize(ref.data, ref.tensor_type), dtype=np.float32).reshape(8, 64)
    assert np.array_equal(dequantize(t), expect)
    assert np.abs(dequantize(t) - w).max() < 0.5  # and it is the weight, not noise


def test_truncated_and_foreign_files_raise(smol_ref: ModelRef, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smol_ref.path.read_bytes()[: 40_000_000])
    with pytest.raises(ValueError, match="past the end"):
        read_gguf_file(cut)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(ValueError, match="magic"):
        read_gguf_file(bad)
