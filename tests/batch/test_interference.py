"""A running batch job never makes an interactive request wait: measured in engine steps (not seconds,
which a shared machine blurs) on a live server whose every seat is taken by batch rows."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from ember.model.loader import LoadedModel
from tests.batch.helpers import MODEL_ID, BatchEnv, jsonl, make_env, upload, wait_job


@pytest.fixture(scope="module")
def busy_env(tiny: LoadedModel) -> Iterator[BatchEnv]:
    # 64 rows in flight for 32 seats: the engine is full of batch rows and more wait behind them.
    yield from make_env(tiny, max_inflight_rows=64)


def test_interactive_requests_go_first_while_a_job_fills_the_engine(busy_env: BatchEnv) -> None:
    env = busy_env
    engine = env.server.engine
    steps = [0]
    added: dict[str, int] = {}
    finished: dict[str, int] = {}
    real_step, real_add = engine.step, engine.add

    # Both run on the engine thread: count steps, and note in which step an interactive request entered
    # the engine and in which it finished (what happens before, in HTTP and tokenizing, is not the
    # scheduler's doing and is measured apart, below).
    def counted_step():  # noqa: ANN202
        steps[0] += 1
        outs = real_step()
        for o in outs:
            if o.finished and o.request_id in added:
                finished[o.request_id] = steps[0]
        return outs

    def noted_add(req):  # noqa: ANN001, ANN202
        if not req.background:
            added[req.request_id] = steps[0]
        return real_add(req)

    engine.step, engine.add = counted_step, noted_add  # type: ignore[method-assign]
    c = env.sdk()
    rows = [{"custom_id": f"b{i}", "body": {"prompt": f"Background row {i} goes on and on", "max_tokens": 200,
                                            "ignore_eos": True}} for i in range(120)]
    upload(c, "busy-in", jsonl(rows))
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="busy-in", batch_inference_job_id="busy")
    wait_job(c, "busy", until={"JOB_STATE_RUNNING"})
    sched = engine.scheduler
    for _ in range(600):  # until batch rows hold every seat and more wait
        if len(sched.running) >= 32 and sched.waiting_background:
            break
        threading.Event().wait(0.02)
    assert len(sched.running) >= 32 and sched.waiting_background
    seen: set[str] = set()
    try:
        with env.http() as h:
            for i in range(3):
                before = steps[0]
                r = h.post("/v1/completions", json={"model": MODEL_ID, "prompt": f"Interactive {i}:",
                                                     "max_tokens": 8, "temperature": 0, "ignore_eos": True})
                total = steps[0] - before  # the HTTP round trip: 9-11 steps measured, not asserted
                assert r.status_code == 200, r.text
                assert r.json()["usage"]["completion_tokens"] == 8
                (rid,) = [k for k in added if k not in seen]
                seen.add(rid)
                # In the engine: the step it arrived in, then one step per token. It never waited for a
                # seat, the token budget or KV memory behind the batch rows.
                assert finished[rid] - added[rid] <= 8 + 1, (finished[rid] - added[rid], total)
                assert total >= finished[rid] - added[rid]
                assert any(s.request.background for s in sched.running)  # the job was still running
                job = c.batch_inference_jobs.get("busy")
                assert job.state == "JOB_STATE_RUNNING"
        assert sched.num_preemptions > 0  # seats were taken from batch rows, not waited for
    finally:
        engine.step, engine.add = real_step, real_add  # type: ignore[method-assign]
        c.batch_inference_jobs.delete("busy")
    job = wait_job(c, "busy")
    assert job.state == "JOB_STATE_CANCELLED"
    got = json.loads(json.dumps(job.job_progress.model_dump()))
    assert got["total_processed_requests"] < 120
