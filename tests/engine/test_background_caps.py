"""Batch rows next to interactive work: capped per step while interactive work is present, the whole step
otherwise, and never starved. Scheduler only (no model): `step` from test_scheduler plays the engine."""

from __future__ import annotations

import pytest

from ember.config import SchedulerConfig
from ember.engine.kv_cache import BlockPool
from ember.engine.kv_manager import KVManager
from ember.engine.request import EngineRequest, SamplingParams
from ember.engine.scheduler import ScheduledBatch, Scheduler
from ember.engine.sequence import Sequence
from tests.engine.test_scheduler import BS, check_blocks, step

TOKENS, SEATS, LINGER = 6, 3, 4


def make(budget: int = 64, max_num_seqs: int = 16, num_blocks: int = 2000, batch_step: int = 512) -> Scheduler:
    cfg = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                          background_tokens_when_busy=TOKENS, background_seqs_when_busy=SEATS,
                          busy_linger_steps=LINGER, background_step_tokens=batch_step)
    return Scheduler(cfg, KVManager(BlockPool(num_blocks, BS, True)))


def seq(name: str, prompt_len: int, first: int, max_tokens: int = 100,
        background: bool = False) -> Sequence:
    ids = tuple(first + i for i in range(prompt_len))
    r = EngineRequest(name, ids, SamplingParams(max_tokens=max_tokens, temperature=0.0), background=background)
    return Sequence(request=r)


def split(b: ScheduledBatch) -> tuple[dict[str, int], dict[str, int]]:
    """(interactive, background) rows of a step: request id -> tokens."""
    fg = {q.request_id: n for q, n in zip(b.seqs, b.num_tokens, strict=True) if not q.request.background}
    bg = {q.request_id: n for q, n in zip(b.seqs, b.num_tokens, strict=True) if q.request.background}
    return fg, bg


def finish_done(s: Scheduler) -> list[str]:
    done = [q for q in s.running if q.num_output_tokens >= q.params.max_tokens]
    for q in done:
        s.finish(q)
    return [q.request_id for q in done]


def test_without_interactive_work_batch_rows_fill_the_step() -> None:
    s = make(budget=64)
    for i in range(8):
        s.add(seq(f"b{i}", 30, first=100 * i + 1, background=True))
    fg, bg = split(step(s))
    assert not fg and sum(bg.values()) == 64  # the whole budget: b0, b1 whole and a chunk of b2
    assert bg == {"b0": 30, "b1": 30, "b2": 4}
    for _ in range(6):
        fg, bg = split(step(s))
        assert sum(bg.values()) == 64 or len(bg) == 8  # full, or every row has what it needs
    check_blocks(s)


def test_with_interactive_work_a_step_carries_at_most_the_background_cap() -> None:
    """Batch rows mid-prompt and decoding; interactive requests arrive and run: every step while they are
    present holds at most TOKENS batch tokens in at most SEATS rows, and every interactive sequence
    gets all the tokens it can use."""
    s = make(budget=64)
    for i in range(8):
        s.add(seq(f"b{i}", 40, first=100 * i + 1, background=True))
    step(s)
    step(s)  # some rows decoding, others still prefilling
    live = [seq(f"i{k}", 20, first=5000 + 50 * k, max_tokens=12) for k in range(3)]
    for q in live:
        s.add(q)
    steps = 0
    while any(not q.is_finished for q in live):
        before = {q.request_id: q.num_uncomputed for q in live if not q.is_finished}
        fg, bg = split(step(s))
        steps += 1
        assert sum(bg.values()) <= TOKENS and len(bg) <= SEATS
        assert fg == before  # interactive rows are never cut short for batch rows
        finish_done(s)
        check_blocks(s)
    assert steps == 12  # one prompt step then one token a step: no step went to batch rows instead


def test_caps_outlast_interactive_work_by_the_linger_steps_then_lift() -> None:
    s = make(budget=64)
    for i in range(8):
        s.add(seq(f"b{i}", 40, first=100 * i + 1, background=True))
    live = seq("live", 10, first=9000, max_tokens=3)
    s.add(live)
    while not live.is_finished:
        fg, bg = split(step(s))
        assert sum(bg.values()) <= TOKENS
        finish_done(s)
    for _ in range(LINGER):  # a client's next request would still find small steps
        fg, bg = split(step(s))
        assert not fg and sum(bg.values()) <= TOKENS and len(bg) <= SEATS
    fg, bg = split(step(s))
    assert len(bg) > SEATS or sum(bg.values()) > TOKENS  # then the batch rows have the whole step


def test_batch_rows_are_never_starved_by_endless_interactive_traffic() -> None:
    """A new interactive request whenever one ends, so interactive work is always present: every batch row
    still finishes, oldest first, and the seats they held go back."""
    s = make(budget=32, max_num_seqs=6)
    rows = [seq(f"b{i}", 12, first=100 * i + 1, max_tokens=5, background=True) for i in range(6)]
    for q in rows:
        s.add(q)
    n_live = 0

    def new_live() -> None:
        nonlocal n_live
        s.add(seq(f"i{n_live}", 8, first=20_000 + 20 * n_live, max_tokens=4))
        n_live += 1

    new_live()
    new_live()
    done: list[str] = []
    for _ in range(400):
        if all(q.is_finished for q in rows):
            break
        fg, bg = split(step(s))
        assert fg  # interactive work every step
        assert sum(bg.values()) <= TOKENS and len(bg) <= SEATS
        for rid in finish_done(s):
            if rid.startswith("i"):
                new_live()
            else:
                done.append(rid)
        check_blocks(s)
    assert all(q.is_finished for q in rows)
    assert done[:SEATS] == sorted(done[:SEATS]) and set(done) == {q.request_id for q in rows}


def test_an_interactive_request_evicts_a_waiting_batch_row_for_its_seat() -> None:
    """Seats all held by batch rows (most of them not scheduled under the cap): an interactive request
    takes a seat at once by preempting the newest batch row, which goes back to the head of its queue."""
    s = make(budget=64, max_num_seqs=5)
    rows = [seq(f"b{i}", 8, first=100 * i + 1, background=True) for i in range(5)]
    for q in rows:
        s.add(q)
    step(s)
    assert len(s.running) == 5
    s.add(seq("live", 8, first=9000))
    b = step(s)
    fg, bg = split(b)
    assert fg == {"live": 8}
    assert [q.request_id for q in b.preempted] == ["b4"]
    assert list(s.waiting_background) == [rows[4]]
    assert len(bg) <= SEATS


def test_batch_only_steps_are_bounded_by_background_step_tokens() -> None:
    """With no interactive work, batch rows still take at most background_step_tokens per step: an
    interactive request that arrives mid-step waits for a short step, not a whole-budget prefill."""
    s = make(budget=64, batch_step=20)
    for i in range(4):
        s.add(seq(f"b{i}", 30, first=100 * i + 1, background=True))
    fg, bg = split(step(s))
    assert not fg and bg == {"b0": 20}
    for _ in range(12):
        fg, bg = split(step(s))
        assert not fg and 0 < sum(bg.values()) <= 20
        finish_done(s)


@pytest.mark.parametrize("kw", [{"background_tokens_when_busy": 0}, {"background_seqs_when_busy": 0},
                                {"background_step_tokens": 0},
                                {"busy_linger_steps": -1}])
def test_caps_that_would_starve_batch_rows_are_refused(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        SchedulerConfig(**kw)
