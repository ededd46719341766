"""The batch job runner: inside `ember serve`, it drives every active job in the store.

Each tick it reads the active jobs (oldest first) and moves them along: VALIDATING -> PENDING -> RUNNING
-> WRITING_RESULTS -> COMPLETED, or FAILED / EXPIRED / CANCELLED. Rows go to the same engine as
interactive requests, marked background, so they only use room interactive traffic leaves.

Rate limits: a row draws from its account's per-minute buckets (ember.platform.limits), the same ones the
account's interactive requests draw from, before it reaches the engine. Where a bucket is short the row
goes back to the head of its job and the job pauses until the bucket could give it (a batch must not
fail for a rate limit, only wait), giving its slot back: one account's empty bucket never holds the
slots other accounts' jobs need. A row that needs more than a whole minute's quota is that row's error
line, as it is a 429 interactively.

Fairness: a fixed number of rows is in flight (BatchConfig.max_inflight_rows, all jobs together); free
slots are dealt one row per job per round, oldest job first, so every running job moves and the oldest
gets the spare slots first.

Durability: a row is done only once its result is committed (BatchJobs.record). On start, the rows a
job still has to run are those of its input file without a committed result (and, for a continuation,
without a successful one in the parent chain), so a job RUNNING when the server was killed resumes where
it was, and a row that was in flight runs again but is stored once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, BinaryIO, TypeVar

from pydantic import ValidationError

from ember.errors import EmberError, InvalidRequest, Overloaded
from ember.gateway.batch_rows import error_line, ok_line, row_defaults, row_request
from ember.gateway.services import BatchServices
from ember.http.errors import error_payload, validation_body
from ember.pipeline.events import Result
from ember.pipeline.pipeline import Pipeline, QuotaWait
from ember.pipeline.request import Caller, UsageKind
from ember.pipeline.usage import Usage
from ember.protocol.chat import CHAT
from ember.protocol.completions import COMPLETIONS
from ember.protocol.endpoint import Endpoint
from ember.protocol.responses import Head, to_json
from ember.protocol.schemas import ChatCompletionRequest
from ember.store import batch_jobs as st
from ember.store.dataset_files import ERRORS_FILE, RESULTS_FILE, Row, read_rows
from ember.store.ids import utcnow
from ember.store.tables import BatchJob

log = logging.getLogger("ember.batch")
T = TypeVar("T")
LEASE_S = 10.0
"""How long a job stays with its runner without word from it: after a crash, another server (or the
restarted one) resumes it this much later at most."""
MAX_QUOTA_WAIT_S = 5.0
"""A job paused for its account's buckets tries again at least this often (a raised quota, or one that
another process changed, applies within this)."""


@dataclass
class JobRun:
    """A running job's live state (in memory only; everything that matters is in the store)."""

    job: BatchJob
    file: BinaryIO
    rows: Iterator[Row]
    defaults: dict
    tasks: set[asyncio.Task] = field(default_factory=set)
    writes: set[asyncio.Future] = field(default_factory=set)
    """Row results being committed (waited for before the output files are written)."""
    retry: deque[Row] = field(default_factory=deque)
    exhausted: bool = False
    ran: int = 0
    paused_until: float = 0.0
    """time.monotonic() before which no row of this job is dispatched: its account's bucket is short."""

    @property
    def key(self) -> tuple[str, str]:
        return self.job.account_id, self.job.job_id

    def next_row(self) -> Row | None:
        if self.retry:
            return self.retry.popleft()
        if self.exhausted:
            return None
        row = next(self.rows, None)
        if row is None:
            self.exhausted = True
        return row


class BatchRunner:
    def __init__(self, services: BatchServices, pipeline: Pipeline) -> None:
        self.b = services
        self.pipeline = pipeline
        self.served = pipeline.served
        self.runs: dict[tuple[str, str], JobRun] = {}
        self.owner = f"{socket.gethostname()[:20]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"[:40]
        """This runner's name on the jobs it drives (see BatchJobs.claim)."""
        self._wake = asyncio.Event()
        self._endings: set[asyncio.Task] = set()
        # Its own threads for store writes and tokenizing: batch work never queues in front of an
        # interactive request's tokenization in the event loop's default executor.
        self._pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="ember-batch")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._main(), name="ember-batch-runner")

    async def stop(self) -> None:
        """Stop at once: rows in flight are abandoned uncommitted and run again at the next start."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for run in list(self.runs.values()):
            await self._drop(run)
        try:
            await self._io(self.b.jobs.release, self.owner)
        except Exception:  # noqa: BLE001 - the leases then simply run out
            log.exception("could not release batch job leases")
        self._pool.shutdown(wait=True)

    def _io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args, **kwargs))

    def wake_soon(self) -> None:
        """Look at the store now rather than at the next tick (callable from any thread)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _main(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad tick must not end batch processing
                log.exception("batch runner tick failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.b.config.poll_s)
            except TimeoutError:
                pass
            self._wake.clear()

    # -- one pass over the active jobs ---------------------------------------------------------------
    async def tick(self) -> None:
        jobs = await self._io(self._claim_jobs)
        active = {(j.account_id, j.job_id): j for j in jobs}
        for key, run in list(self.runs.items()):  # deleted under us (a finished job's row removed)
            if key not in active:
                await self._drop(run)
        now = utcnow()
        for j in jobs:
            if j.state == st.CANCELLING:
                await self._finish(j, st.CANCELLED, "CANCELLED", j.status_message or "cancelled",
                                   (st.CANCELLING,))
            elif j.expire_time <= now and j.state != st.WRITING:
                await self._finish(j, st.EXPIRED, "DEADLINE_EXCEEDED",
                                   "the job did not finish by its expireTime; rows done so far are in the "
                                   "output dataset", (st.VALIDATING, st.PENDING, st.RUNNING))
            elif j.state == st.VALIDATING:
                await self._validate(j)
            elif j.state in (st.PENDING, st.RUNNING) and (j.account_id, j.job_id) not in self.runs:
                await self._open(j)
            elif j.state == st.WRITING:
                await self._write_results(j)
        self._dispatch()
        for run in list(self.runs.values()):
            if run.exhausted and not run.retry and not run.tasks:
                await self._complete(run)

    def _claim_jobs(self) -> list[BatchJob]:
        """The active jobs this runner drives, oldest first: its own (their leases renewed) and any that
        no live runner holds. Jobs another server drives are left to it."""
        jobs = self.b.jobs.active()
        self.b.jobs.renew(self.owner, LEASE_S)
        return [j for j in jobs if j.owner == self.owner
                or self.b.jobs.claim(j.account_id, j.job_id, self.owner, LEASE_S)]

    def _input_where(self, j: BatchJob) -> str:
        return f"input dataset {j.input_dataset_id!r}"

    def _input_path(self, j: BatchJob):
        d = self.b.datasets.find(j.account_id, j.input_dataset_id)
        if d is None:
            raise InvalidRequest(f"{self._input_where(j)} no longer exists")
        if not d.filenames:
            raise InvalidRequest(f"{self._input_where(j)} has no file")
        return self.b.files.path_of(j.account_id, j.input_dataset_id, d.filenames[0]), d.filenames[0]

    def _todo(self, j: BatchJob) -> tuple[set[str], int]:
        """custom_ids already settled for this job, and how many rows it has to run in all."""
        done = self.b.jobs.done_ids(j.account_id, j.job_id)
        skip = done | self.b.jobs.succeeded_in_chain(j.account_id, j.job_id) if j.continued_from else done
        path, name = self._input_path(j)
        total = 0
        inherited = 0
        try:
            with open(path, "rb") as f:
                for row in read_rows(f, name):
                    total += 1
                    if row.custom_id in skip and row.custom_id not in done:
                        inherited += 1
        except OSError as e:
            raise InvalidRequest(f"cannot read the input file {name!r} of {self._input_where(j)}: "
                                 f"{e.strerror or e}") from None
        return skip, total - inherited

    async def _validate(self, j: BatchJob) -> None:
        try:
            _, total = await self._io(self._todo, j)
        except EmberError as e:
            await self._finish(j, st.FAILED, "INVALID_ARGUMENT", e.message, (st.VALIDATING,))
            return
        await self._io(self.b.jobs.transition, j.account_id, j.job_id, st.PENDING, (st.VALIDATING,),
                                total_rows=total)

    async def _open(self, j: BatchJob) -> None:
        """Start (or resume, after a restart) a job: the rows still to run are read lazily from its file."""
        try:
            skip, total = await self._io(self._todo, j)
            path, name = await self._io(self._input_path, j)
            f = open(path, "rb")  # noqa: SIM115 - held while the job runs, closed by _drop
        except (EmberError, OSError) as e:
            msg = e.message if isinstance(e, EmberError) else f"cannot open the input file of {self._input_where(j)}"
            await self._finish(j, st.FAILED, "INVALID_ARGUMENT", msg, (st.PENDING, st.RUNNING))
            return
        if j.state == st.PENDING:
            moved = await self._io(self.b.jobs.transition, j.account_id, j.job_id, st.RUNNING,
                                            (st.PENDING,), run_start=utcnow(), total_rows=total)
            if not moved:
                f.close()
                return
        rows = (r for r in read_rows(f, name) if r.custom_id not in skip)
        self.runs[(j.account_id, j.job_id)] = JobRun(j, f, rows, row_defaults(j.params))

    def _dispatch(self) -> None:
        free = self.b.config.max_inflight_rows - sum(len(r.tasks) for r in self.runs.values())
        now = time.monotonic()
        runs = sorted((r for r in self.runs.values() if r.paused_until <= now), key=lambda r: (r.job.created, r.key))
        while free > 0 and runs:
            for run in list(runs):
                if free <= 0:
                    break
                try:
                    row = run.next_row()
                except (EmberError, OSError) as e:  # the file changed or broke under the job: job-level
                    run.exhausted = True
                    run.retry.clear()
                    msg = e.message if isinstance(e, EmberError) else (
                        f"cannot read the input file of {self._input_where(run.job)}: {e}")
                    failing = asyncio.create_task(self._fail_run(run, msg))
                    self._endings.add(failing)
                    failing.add_done_callback(self._endings.discard)
                    runs.remove(run)
                    continue
                if row is None:
                    runs.remove(run)
                    continue
                task = asyncio.create_task(self._run_row(run, row))
                run.tasks.add(task)
                task.add_done_callback(run.tasks.discard)
                task.add_done_callback(lambda _t: self._wake.set())
                free -= 1

    # -- one row -------------------------------------------------------------------------------------
    async def _run_row(self, run: JobRun, row: Row) -> None:
        j = run.job
        try:
            ok, line, result = await self._complete_row(run, row)
        except Overloaded:  # the engine is stopping: leave the row for the next start
            run.retry.append(row)
            await asyncio.sleep(1.0)
            return
        except QuotaWait as w:  # first in line again once the bucket could give it; the slot is free now
            run.retry.appendleft(row)
            run.paused_until = max(run.paused_until, time.monotonic() + min(w.seconds, MAX_QUOTA_WAIT_S))
            return
        except Exception as e:  # noqa: BLE001 - one row's failure is that row's error line
            log.exception("batch row %s of %s failed", row.custom_id[:80], j.job_id)
            ok, line, result = False, error_line(j, row.custom_id, error_payload(e)["error"]), None
        u = result.usage if result is not None else Usage()
        # The commit runs to its end even if the job is cancelled meanwhile: whoever writes the output
        # files waits for run.writes first, so the files hold every row the store holds.
        write = asyncio.ensure_future(self._io(
            self.b.jobs.record, j.account_id, j.job_id, row.custom_id, ok, line, u.prompt_tokens, u.cached_tokens,
            u.completion_tokens))
        run.writes.add(write)
        write.add_done_callback(run.writes.discard)
        if result is not None:
            write.add_done_callback(lambda w: self._settle(result, w))
        try:
            await asyncio.shield(write)
        except Exception:  # noqa: BLE001 - the store refused the write: the row is not done, run it again
            log.exception("storing the result of row %s of %s failed; it will run again",
                          row.custom_id[:80], j.job_id)
            await asyncio.sleep(1.0)
            run.retry.append(row)
            return
        run.ran += 1

    def _settle(self, result: Result, write: asyncio.Future) -> None:
        """Meter a row once, when its result was newly stored (a rerun after a crash is not)."""
        if not write.cancelled() and write.exception() is None and write.result():
            self.pipeline.settle(result)

    async def _complete_row(self, run: JobRun, row: Row) -> tuple[bool, str, Result | None]:
        """(ok, output line, result to settle); a row that is not a valid request of its endpoint is an
        error line."""
        j = run.job
        try:
            req = row_request(j, row, self.served, run.defaults)
        except InvalidRequest as e:
            return False, error_line(j, row.custom_id, error_payload(e)["error"]), None
        except ValidationError as e:
            return False, error_line(j, row.custom_id, validation_body(list(e.errors()))["error"]), None
        endpoint: Endpoint = CHAT if isinstance(req, ChatCompletionRequest) else COMPLETIONS
        engine_id = f"batch-{uuid.uuid4().hex}"
        # A row runs for its job's account: its prompt shares that account's prefix cache only.
        caller = Caller(j.account_id, j.key_id, j.account_id)
        try:
            gen = await self.pipeline.start_background(
                lambda: endpoint.request(req, self.served, caller, engine_id, None, UsageKind.BATCH), self._io)
            builder = endpoint.responses(req, self.served, gen, Head(engine_id, int(time.time()),
                                                                      self.served.model_id), time.monotonic())
            try:
                async for ev in gen.events():
                    builder.add(ev.index, ev.output)
            finally:  # refund what the row reserved and did not use; metered once stored (_settle)
                result = gen.finish()
        except Overloaded:
            raise
        except EmberError as e:
            return False, error_line(j, row.custom_id, error_payload(e)["error"]), None
        body, _ = builder.response()
        return True, ok_line(j, row.custom_id, engine_id, to_json(body)), result

    # -- endings -------------------------------------------------------------------------------------
    async def _drop(self, run: JobRun) -> None:
        """Forget a run: abandon its rows in flight (uncommitted, so they run again if the job does)."""
        self.runs.pop(run.key, None)
        for t in list(run.tasks):
            t.cancel()
        await asyncio.gather(*run.tasks, return_exceptions=True)
        await asyncio.gather(*run.writes, return_exceptions=True)
        run.file.close()

    async def _fail_run(self, run: JobRun, message: str) -> None:
        await self._drop(run)
        await self._finish(run.job, st.FAILED, "INVALID_ARGUMENT", message, (st.RUNNING,))

    async def _complete(self, run: JobRun) -> None:
        j = run.job
        await self._drop(run)
        if not await self._io(self.b.jobs.transition, j.account_id, j.job_id, st.WRITING, (st.RUNNING,)):
            return
        await self._write_results(j)

    async def _write_results(self, j: BatchJob) -> None:
        await self._io(self._write_files, j)
        p = await self._io(self.b.jobs.progress, j.account_id, j.job_id)
        if p.processed and not p.succeeded:
            await self._io(self.b.jobs.transition, j.account_id, j.job_id, st.FAILED, (st.WRITING,),
                                    "INVALID_ARGUMENT", "no row of the input was a valid request; "
                                    "see error-data in the output dataset")
        else:
            await self._io(self.b.jobs.transition, j.account_id, j.job_id, st.COMPLETED, (st.WRITING,))

    async def _finish(self, j: BatchJob, to: str, code: str, message: str, from_states: tuple[str, ...]) -> None:
        """End a job early: stop its rows, write what is done, then move it to `to`."""
        run = self.runs.get((j.account_id, j.job_id))
        if run is not None:
            await self._drop(run)
        await self._io(self._write_files, j)
        await self._io(self.b.jobs.transition, j.account_id, j.job_id, to, from_states, code, message)

    def _write_files(self, j: BatchJob) -> None:
        """The output dataset's two files from the committed rows (atomic; safe to redo after a crash)."""
        a, out = j.account_id, j.output_dataset_id
        if self.b.datasets.find(a, out) is None:
            return  # the user deleted the output dataset: nothing to write into
        size = self.b.files.write_lines(a, out, RESULTS_FILE, self.b.jobs.lines(a, j.job_id, True))
        size += self.b.files.write_lines(a, out, ERRORS_FILE, self.b.jobs.lines(a, j.job_id, False))
        p = self.b.jobs.progress(a, j.job_id)
        try:
            self.b.datasets.mark_ready(a, out, [RESULTS_FILE, ERRORS_FILE], size, p.succeeded, p.completion_tokens)
        except EmberError:
            log.warning("output dataset %s of %s vanished while its files were written", out, j.job_id)
