"""Random interleavings of add / step / abort on a real engine (tiny model, 12 blocks of 8 tokens): whatever the
order, every request ends exactly once, nothing is emitted after its end, and every KV block comes back.

This is the abort-races-the-last-step family of bugs (a block pinned by a sequence that finished and
was aborted in the same breath, a preempted sequence aborted while waiting, a prefix shared between a
finishing and an aborted request), driven directly instead of hoping a load test hits it.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, given, settings

from ember.engine.request import SamplingParams
from ember.errors import EmberError
from ember.model.loader import LoadedModel
from tests.engine.helpers import make_engine, req

NUM_BLOCKS = 12
BS = 8
PREFIXES = [[100 + i] * 20 for i in range(3)]  # two shared blocks and a bit: prefix hits and sharing

add_op = st.tuples(st.just("add"), st.integers(0, 2), st.integers(1, 40), st.integers(1, 24),
                   st.booleans())
step_op = st.tuples(st.just("step"))
abort_op = st.tuples(st.just("abort"), st.integers(0, 30))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(add_op, add_op, step_op, step_op, abort_op), max_size=60))
def test_any_interleaving_ends_every_request_once_and_frees_every_block(tiny: LoadedModel, ops) -> None:
    engine = make_engine(tiny, block_size=BS, kv_cache_mb=1, max_num_batched_tokens=64)
    engine.pool.__init__(NUM_BLOCKS, BS, True)  # far smaller than the runner's cache: preemption is routine
    added: list[str] = []
    ended: dict[str, str] = {}  # request id -> "finished" | "aborted"

    def step() -> None:
        for o in engine.step():
            assert o.request_id not in ended, f"{o.request_id} emitted after it ended"
            if o.finished:
                ended[o.request_id] = "finished"

    for op in ops:
        if op[0] == "add":
            _, family, extra, max_tokens, seeded = op
            rid = f"r{len(added)}"
            params = SamplingParams(max_tokens=max_tokens, temperature=1.0 if seeded else 0.0,
                                    seed=len(added) if seeded else None, ignore_eos=True)
            try:
                engine.add(req(rid, PREFIXES[family] + [200 + len(added)] * extra, params))
            except EmberError:
                continue  # more than the whole pool can ever hold: refused up front, never admitted
            added.append(rid)
        elif op[0] == "step":
            step()
        elif added:
            rid = added[op[1] % len(added)]
            engine.abort(rid)  # also on requests that already finished: must be a no-op
            ended.setdefault(rid, "aborted")
        used = sum(1 for b in engine.pool.blocks if b.ref_count > 0)
        assert used == engine.pool.num_used
        assert all(b.ref_count >= 0 for b in engine.pool.blocks)
        assert engine.kv.num_holders == len(engine.scheduler.running)  # blocks iff running: none leak
    for _ in range(5000):
        if not engine.has_work:
            break
        step()
    assert not engine.has_work, "the engine did not drain"
    event(f"preempted: {engine.scheduler.num_preemptions > 0}")
    event(f"prefix hits: {engine.pool.hits > 0}")
    assert set(ended) == set(added)
    assert not engine.seqs
    assert engine.pool.num_free == NUM_BLOCKS
    assert engine.kv.num_holders == 0
    assert all(b.ref_count == 0 for b in engine.pool.blocks)
