"""On the default (quantized) CPU path a decoding row's logits do not depend on what shares its batch."""

from __future__ import annotations

import pytest
import torch

from ember.engine.request import SamplingParams
from ember.model.attention import DECODE_PAD, PROBE_CASES, decode_padding_is_invariant
from ember.model.loader import LoadedModel
from tests.engine.helpers import make_engine, req, run_all


@pytest.mark.parametrize("native", [True, False], ids=["native-kernel", "torch-ops"])
def test_decode_logits_are_batch_invariant(smol_served: LoadedModel, native: bool) -> None:
    tok = smol_served.tokenizer
    shorts = [tok.encode(t) for t in ("Once upon a time", "The capital of France is", "def fibonacci(n):",
                                      "List three colours:")]
    long = tok.encode("The history of the printing press is long and full of surprises. " * 25)
    other = tok.encode("Write a short poem about the sea.")
    greedy = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True, logprobs=3)
    seeded = SamplingParams(max_tokens=64, temperature=1.0, seed=7, ignore_eos=True, logprobs=3)
    mine = [req(f"g{i}", p, greedy) for i, p in enumerate(shorts)] + [req("s", shorts[0], seeded)]
    engine = make_engine(smol_served, max_num_batched_tokens=512, native=native)
    assert engine.runner.native == native
    alone = {r.request_id: run_all(engine, [r])[r.request_id] for r in mine}
    # The runner believes the platform's probe (native kernels are invariant by construction); where the
    # probe says no, draft rows are re-attended unpadded, a second pass.
    a = smol_served.model.args
    assert engine.runner.padding_invariant == (native or decode_padding_is_invariant(
        a.n_heads, a.n_kv_heads, a.head_dim, DECODE_PAD, torch.device("cpu")))
    # The same requests decoding next to a 400-token context (padding every row to its length),
    # while another request's prompt is prefilled in the same steps.
    crowd = run_all(make_engine(smol_served, max_num_batched_tokens=512, native=native),
                    [*mine, req("long", long, SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)),
                     req("late", other * 12, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))])
    for rid in alone:
        assert crowd[rid].token_ids == alone[rid].token_ids
        got = [(r.token_id, r.logprob, r.top) for o in crowd[rid].outputs for r in o.new_logprobs]
        want = [(r.token_id, r.logprob, r.top) for o in alone[rid].outputs for r in o.new_logprobs]
        assert got == want  # bit-identical floats, not merely close


def test_padding_probe_tells_padded_from_unpadded_decode() -> None:
    """Contexts padded to whole 16-wide vectors attend the same alone or batched, up to 1,000 tokens on
    every CPU measured (Zen 3, Zen 5, an AMX Xeon); unpadded ones do not, which is why the runner pads
    every decode context to DECODE_PAD. Longer batches may change the BLAS's blocking (the AMX Xeon's
    torch differs at a 2,000-token batch): the full probe then says so and the runner re-attends drafts."""
    cpu = torch.device("cpu")
    up_to_1k = tuple(c for c in PROBE_CASES if c[1] <= 1000)
    assert len(up_to_1k) == len(PROBE_CASES) - 1
    assert decode_padding_is_invariant(9, 3, 64, DECODE_PAD, cpu, cases=up_to_1k)
    assert not decode_padding_is_invariant(9, 3, 64, 1, cpu)


def test_native_kernel_and_torch_ops_agree(smol: LoadedModel) -> None:
    """The native kernels (attention, add+norm, RoPE+KV write, SiLU*up) and the torch ops sum in different
    orders, so logprobs agree closely, not bitwise (on the fp32 model: on the quantized one, bf16 rounding
    magnifies last-bit differences)."""
    tok = smol.tokenizer
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=1)
    reqs = [req(f"p{i}", tok.encode(t), params) for i, t in enumerate(["The capital of France is",
                                                                          "Once upon a time"])]
    by = {native: run_all(make_engine(smol, native=native), reqs) for native in (True, False)}
    for r in reqs:
        a, b = by[True][r.request_id], by[False][r.request_id]
        assert a.token_ids == b.token_ids
        la = [x.logprob for o in a.outputs for x in o.new_logprobs]
        lb = [x.logprob for o in b.outputs for x in o.new_logprobs]
        assert max(abs(x - y) for x, y in zip(la, lb, strict=True)) < 1e-3


def _prompt_logprobs(res) -> list[float | None]:
    out = next(o for o in res.outputs if o.prompt_logprobs is not None)
    return [t.logprob for t in out.prompt_logprobs]


def test_prefill_is_invariant_to_chunking_and_the_prefix_cache(smol_served: LoadedModel) -> None:
    """With the native kernel every prompt row is attended alone, so a prompt split into chunks by a busy
    step, or resumed from cached blocks, computes exactly what it computes alone in one piece (torch's
    flash attention rounded a chunk's tail rows differently: echo logprobs moved by up to 0.1 nats)."""
    tok = smol_served.tokenizer
    prompt = tok.encode("The committee met on Tuesday to review the budget for the coming year. " * 14)
    assert 160 < len(prompt) < 256
    echo = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, prompt_logprobs=0, logprobs=1)
    engine = make_engine(smol_served, max_num_batched_tokens=512)
    assert engine.runner.native
    alone = run_all(engine, [req("a", prompt, echo)])["a"]
    # Three copies at once: the third gets what is left of the 512-token budget, then the rest.
    crowd = run_all(engine, [req(f"c{i}", prompt, echo) for i in range(3)])
    for i in range(3):
        assert _prompt_logprobs(crowd[f"c{i}"]) == _prompt_logprobs(alone)
        assert [x.logprob for o in crowd[f"c{i}"].outputs for x in o.new_logprobs] == \
            [x.logprob for o in alone.outputs for x in o.new_logprobs]
    # Without prompt logprobs the prompt's blocks come from the cache; the continuation is bit-identical.
    plain = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, logprobs=1)
    cold = run_all(make_engine(smol_served, prefix=False), [req("cold", prompt, plain)])["cold"]
    run_all(engine, [req("warm-up", prompt, plain)])
    warm = run_all(engine, [req("warm", prompt, plain)])["warm"]
    assert warm.cached_tokens >= 160
    assert [x.logprob for o in warm.outputs for x in o.new_logprobs] == \
        [x.logprob for o in cold.outputs for x in o.new_logprobs]


def test_a_preempted_sequence_resumes_bit_for_bit(smol_served: LoadedModel) -> None:
    """Preemption drops a sequence's KV and recomputes it (generated tokens included) as a prefill; with
    the kernel a prefill row does a decode row's arithmetic, so the continuation is unchanged to the bit."""
    tok = smol_served.tokenizer
    texts = ["Once upon a time in a small village", "The capital of France is",
             "Write a list of fruits:", "In 1969 the first people landed on"]
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, logprobs=1)
    reqs = [req(f"p{i}", tok.encode(t), params) for i, t in enumerate(texts)]
    alone = {r.request_id: run_all(make_engine(smol_served), [r])[r.request_id] for r in reqs}
    engine = make_engine(smol_served)
    assert engine.runner.native
    engine.pool.__init__(12, 16, True)  # 192 token slots for four sequences of ~50 tokens each
    got = run_all(engine, reqs)
    assert engine.scheduler.num_preemptions > 0
    for rid, want in alone.items():
        assert got[rid].token_ids == want.token_ids
        assert [x.logprob for o in got[rid].outputs for x in o.new_logprobs] == \
            [x.logprob for o in want.outputs for x in o.new_logprobs]
    assert engine.pool.num_free == 12
