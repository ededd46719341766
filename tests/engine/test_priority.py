"""Two priorities in the scheduler: batch-job rows (background) only fill room interactive requests leave."""

from __future__ import annotations

from dataclasses import replace

from ember.engine.engine import Engine
from ember.engine.request import EngineRequest
from ember.model.loader import LoadedModel
from tests.engine.helpers import Result, greedy, make_engine, req, run_all
from tests.engine.test_engine import prompts


def bg(rid: str, ids: list[int], max_tokens: int = 40) -> EngineRequest:
    return replace(req(rid, ids, greedy(max_tokens=max_tokens)), background=True)


def step_collect(engine: Engine, res: dict[str, Result]) -> set[str]:
    """One step; the ids that produced a token in it."""
    got = set()
    for o in engine.step():
        r = res.setdefault(o.request_id, Result())
        r.token_ids.extend(o.new_token_ids)
        if o.finish_reason is not None:
            r.finish_reason = str(o.finish_reason)
        if o.new_token_ids:
            got.add(o.request_id)
    return got


def drain(engine: Engine, res: dict[str, Result]) -> None:
    for _ in range(5000):
        if not engine.has_work:
            return
        step_collect(engine, res)
    raise AssertionError("engine did not drain")


def test_background_rows_run_on_an_idle_engine_and_match_interactive(tiny: LoadedModel) -> None:
    ps = prompts(5, 10, 40, tiny.args.vocab_size, seed=11)
    fg = run_all(make_engine(tiny), [req(str(i), p, greedy(max_tokens=12)) for i, p in enumerate(ps)])
    back = run_all(make_engine(tiny), [bg(str(i), p, 12) for i, p in enumerate(ps)])
    for i in range(len(ps)):
        assert back[str(i)].token_ids == fg[str(i)].token_ids
        assert back[str(i)].finish_reason == "length"


def test_interactive_request_takes_a_seat_from_batch_rows_at_once(tiny: LoadedModel) -> None:
    """Every seat is held by a batch row: an interactive request arriving gets its first token in the very
    next step (a batch row is preempted for it), and the preempted row still finishes exactly."""
    engine = make_engine(tiny, max_num_seqs=4, max_num_batched_tokens=256)
    ps = prompts(5, 20, 30, tiny.args.vocab_size, seed=5)
    solo = {str(i): run_all(make_engine(tiny), [req(str(i), p, greedy(max_tokens=40))])[str(i)].token_ids
            for i, p in enumerate(ps[:4])}
    res: dict[str, Result] = {}
    for i, p in enumerate(ps[:4]):
        engine.add(bg(str(i), p))
    for _ in range(3):
        step_collect(engine, res)
    assert len(engine.scheduler.running) == 4
    preempted_before = engine.scheduler.num_preemptions
    engine.add(req("live", ps[4], greedy(max_tokens=8)))
    assert "live" in step_collect(engine, res)  # first token in the first step after it arrived
    assert engine.scheduler.num_preemptions == preempted_before + 1
    assert sum(s.request.background for s in engine.scheduler.running) == 3
    drain(engine, res)
    assert res["live"].finish_reason == "length" and len(res["live"].token_ids) == 8
    for rid, ids in solo.items():  # preempt-by-recompute changes nothing in a batch row's output
        assert res[rid].token_ids == ids, rid


def test_batch_rows_wait_while_interactive_requests_wait(tiny: LoadedModel) -> None:
    """Seats full of interactive requests and one more interactive waiting: a batch row that arrived
    first is still not admitted, and never preempts an interactive request."""
    engine = make_engine(tiny, max_num_seqs=2, max_num_batched_tokens=256)
    ps = prompts(4, 10, 20, tiny.args.vocab_size, seed=8)
    res: dict[str, Result] = {}
    engine.add(bg("row", ps[0], 4))
    engine.add(req("a", ps[1], greedy(max_tokens=6)))
    engine.add(req("b", ps[2], greedy(max_tokens=6)))
    engine.add(req("c", ps[3], greedy(max_tokens=6)))
    first = step_collect(engine, res)
    assert first == {"a", "b"}
    assert [s.request_id for s in engine.scheduler.waiting_background] == ["row"]
    first: dict[str, int] = {}
    for step in range(100):
        if not engine.has_work:
            break
        for rid in step_collect(engine, res):
            first.setdefault(rid, step)
        if any(s.request_id == "c" for s in engine.scheduler.waiting):
            assert all(s.request_id != "row" for s in engine.scheduler.running)
    assert first["c"] <= first["row"]  # the same step at best, when c's admission left a seat
    assert engine.scheduler.num_preemptions == 0
    assert all(res[r].finish_reason == "length" for r in ("a", "b", "c", "row"))


def test_interactive_prefill_takes_the_token_budget_first(tiny: LoadedModel) -> None:
    """Batch rows mid-prompt do not make an interactive prompt wait: it gets its whole budget share first."""
    engine = make_engine(tiny, max_num_seqs=8, max_num_batched_tokens=64)
    long = prompts(3, 200, 200, tiny.args.vocab_size, seed=2)
    for i, p in enumerate(long):
        engine.add(bg(f"row{i}", p, 4))
    res: dict[str, Result] = {}
    step_collect(engine, res)  # the rows start prefilling, 64 tokens a step
    short = prompts(1, 30, 30, tiny.args.vocab_size, seed=3)[0]
    engine.add(req("live", short, greedy(max_tokens=3)))
    batch = engine.scheduler.schedule()
    sizes = {s.request_id: n for s, n in zip(batch.seqs, batch.num_tokens, strict=True)}
    assert sizes["live"] == 30
    assert sum(sizes.values()) <= 64


def test_memory_pressure_preempts_batch_rows_not_interactive(tiny: LoadedModel) -> None:
    """A KV pool too small for everyone: batch rows give their blocks to interactive requests, and every
    sequence still finishes with the output it has alone."""
    ps = prompts(5, 60, 60, tiny.args.vocab_size, seed=4)
    solo = {str(i): run_all(make_engine(tiny), [req(str(i), p, greedy(max_tokens=30))])[str(i)].token_ids
            for i, p in enumerate(ps)}
    engine = make_engine(tiny, kv_cache_mb=1, block_size=16, max_num_seqs=8, max_num_batched_tokens=512)
    # Leave 13 free blocks: two interactive sequences (6 blocks each at 90 tokens) fit, nothing more.
    hog = engine.pool.allocate(engine.pool.num_free - 13)
    assert hog is not None
    res: dict[str, Result] = {}
    for i in range(3):
        engine.add(bg(str(i), ps[i], 30))
    step_collect(engine, res)
    for i in range(3, 5):
        engine.add(req(str(i), ps[i], greedy(max_tokens=30)))
    seqs = dict(engine.seqs)
    drain(engine, res)
    assert engine.scheduler.num_preemptions > 0
    assert all(seqs[r].num_preemptions == 0 for r in ("3", "4"))
    assert sum(seqs[r].num_preemptions for r in ("0", "1", "2")) > 0
    for rid, ids in solo.items():
        assert res[rid].token_ids == ids, rid
