"""EngineClient: the async face of the engine.

The engine steps on its own thread so the HTTP event loop never waits on the model. Requests and aborts
cross into that thread through a queue; outputs cross back through `loop.call_soon_threadsafe` into one
asyncio.Queue per submission.

The n choices of one HTTP request enter the engine in one message, hence in one step: a seeded request
then repeats exactly, because its rows always share a batch of the same shape (submitted one by one, a
step could start between them, and a mixed prefill+decode batch rounds the logits' last bits differently).

    event loop                         engine thread
    submit() --(inbox: add)-->         drain inbox -> Engine.add / abort
    async for out in stream  <--       step() -> outputs -> call_soon_threadsafe(queue.put_nowait)
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ember.engine.engine import Engine, EngineStats
from ember.engine.request import EngineRequest, FinishReason, RequestOutput
from ember.errors import DeadlineExceeded, EmberError, Overloaded

log = logging.getLogger("ember.engine")
T = TypeVar("T")


class TorchThread:
    """The one thread that runs a server's torch work: loading, KV allocation, then the step loop.

    Each OpenMP master thread keeps its own team of workers, and an idle team of another thread (the one
    that loaded the model, say) competes with the stepping thread's: on 2 cores that about doubles the
    time per token. One thread for all torch work keeps one team.
    """

    def __init__(self, name: str = "ember-engine") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        return self._pool.submit(fn, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)


@dataclass
class _Add:
    reqs: list[EngineRequest]
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[tuple[int, RequestOutput | BaseException]]


@dataclass
class _Abort:
    request_id: str


@dataclass
class _FailAll:
    err: BaseException


class EngineClient:
    def __init__(self, engine: Engine, on_step: Callable[[Engine, float, list[RequestOutput]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """`clock`: seconds, monotonic; the watchdog's heartbeat and stalled_for() are read on it."""
        self.engine = engine
        self._clock = clock
        self._inbox: queue.Queue[_Add | _Abort | _FailAll | None] = queue.Queue()
        self._streams: dict[str, tuple[_Add, int]] = {}
        self._thread: threading.Thread | None = None
        self._future: Future[None] | None = None
        self._stopping = False
        self._on_step = on_step
        self._stats = engine.stats()
        self._held: dict[str, RequestOutput] = {}
        """Outputs of background requests so far, delivered merged when they finish."""
        self._fresh: list[str] = []
        """Requests admitted since the last step that completed: the suspects when a step fails."""
        self._failed_once = False
        self._beat = clock()
        """When the loop last finished a step or an idle wait (the watchdog's heartbeat). The idle wait
        is at most 0.5 s, so a loop that is alive and idle never lets this age past that."""
        self._working = False
        """The loop is handling a message or stepping (not waiting for work): a stall may happen here
        before any stream is registered, e.g. wedged while admitting the only request."""
        self._died: BaseException | None = None
        self._lock = threading.Lock()
        self._closed = False
        """Set once the loop has ended: a submission put in the inbox after that would wait forever."""

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, torch_thread: TorchThread | None = None) -> None:
        """Run the step loop on `torch_thread` (the thread that loaded the model), or a new thread."""
        if torch_thread is not None:
            self._future = torch_thread.submit(self._loop)
            return
        self._thread = threading.Thread(target=self._loop, name="ember-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._future is not None:
            try:
                self._future.result(timeout=30)
            except Exception:  # noqa: BLE001 - already logged by the loop; stopping must not raise
                log.exception("engine loop ended with an error")

    @property
    def alive(self) -> bool:
        if self._died is not None:
            return False
        if self._future is not None:
            return not self._future.done()
        return self._thread is not None and self._thread.is_alive()

    @property
    def died_of(self) -> BaseException | None:
        """What ended the step loop, when something other than stop() did."""
        return self._died

    def stalled_for(self) -> float:
        """Seconds since the loop last stepped while work is pending; 0.0 when nothing is pending.

        Work is pending while the loop handles a message or steps, any submission is unfinished, or a
        message waits in the inbox. A loop that is wedged (a kernel that never returns, a lock never
        released) stops beating; an idle loop beats every 0.5 s, so idleness alone never reads as a
        stall. Safe to call from any thread: it reads a float, a bool and the truth of a dict and a queue.
        """
        if not self._working and not self._streams and self._inbox.empty():
            return 0.0
        return max(0.0, self._clock() - self._beat)

    def stats(self) -> EngineStats:
        """A snapshot taken by the engine thread after its last step (safe to read from any thread)."""
        return self._stats

    # -- the async face --------------------------------------------------------------------------
    async def generate(self, req: EngineRequest, deadline: float | None = None) -> AsyncIterator[RequestOutput]:
        """Submit a request and yield its outputs; leaving early (or being cancelled) aborts it."""
        async for _, out in self.generate_all([req], deadline):
            yield out

    async def generate_all(self, reqs: list[EngineRequest],
                           deadline: float | None = None) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Submit requests together (same engine step) and yield (index, output) as they come.

        Leaving early, being cancelled or any request failing aborts whatever still runs. Past `deadline`
        (time.monotonic()), waiting in the queue included, DeadlineExceeded is raised and the requests are
        aborted; a consumer slower than the engine is checked between outputs.
        """
        out: asyncio.Queue[tuple[int, RequestOutput | BaseException]] = asyncio.Queue()
        with self._lock:
            if self._stopping or self._closed or not self.alive:
                raise Overloaded("the engine is not running", retry_after=1.0)
            self._inbox.put(_Add(list(reqs), asyncio.get_running_loop(), out))
        running = set(range(len(reqs)))
        try:
            while running:
                if deadline is None:
                    i, item = await out.get()
                else:
                    left = deadline - time.monotonic()
                    try:
                        if left <= 0:
                            raise TimeoutError
                        i, item = await asyncio.wait_for(out.get(), left)
                    except TimeoutError:
                        raise DeadlineExceeded("the request's deadline passed before it finished",
                                               param="x-request-timeout") from None
                if isinstance(item, BaseException):
                    raise item
                if item.finished:
                    running.discard(i)
                yield i, item
        finally:
            for i in running:
                self.abort(reqs[i].request_id)

    def abort(self, request_id: str) -> None:
        self._inbox.put(_Abort(request_id))

    def fail_all(self, err: BaseException) -> None:
        """End every request in flight with `err` (a drain that ran out of time); the loop runs on."""
        self._inbox.put(_FailAll(err))

    # -- the engine thread -----------------------------------------------------------------------
    def _deliver(self, add: _Add, i: int, item: RequestOutput | BaseException) -> None:
        try:
            add.loop.call_soon_threadsafe(add.out.put_nowait, (i, item))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            for req in add.reqs:
                self.engine.abort(req.request_id)
                self._streams.pop(req.request_id, None)
                self._held.pop(req.request_id, None)

    def _admit(self, add: _Add) -> None:
        """Add a submission's requests all or none: a refused one fails the whole submission.

        Any exception fails only this submission, never the loop: an unexpected one escaping here once
        ended the engine thread, and every client then waited forever.
        """
        try:
            self.engine.refuse_if_backlogged(add.reqs)
        except EmberError as e:
            self._deliver(add, 0, e)
            return
        added: list[str] = []
        for i, req in enumerate(add.reqs):
            try:
                self.engine.add(req)
            except Exception as e:  # noqa: BLE001 - EmberError is the user's fault, anything else a bug
                if not isinstance(e, EmberError):
                    log.exception("admitting request %s failed", req.request_id)
                for rid in added:
                    self.engine.abort(rid)
                    self._streams.pop(rid, None)
                self._deliver(add, i, e)
                return
            added.append(req.request_id)
            self._streams[req.request_id] = (add, i)
        self._fresh.extend(added)

    def _drain(self, block: bool) -> bool:
        try:
            msg = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return True
        self._working = True
        while True:
            if msg is None:
                return False
            if isinstance(msg, _Add):
                self._admit(msg)
            elif isinstance(msg, _FailAll):
                self._fail_all(msg.err)
            else:
                self.engine.abort(msg.request_id)
                self._streams.pop(msg.request_id, None)
                self._held.pop(msg.request_id, None)
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return True

    def _loop(self) -> None:
        try:
            self._run_loop()
        except BaseException as e:
            # Whatever ended the loop, nobody may be left waiting on it: fail them all, and say so in
            # /health (alive turns false) so that an orchestrator restarts the process.
            self._died = e
            log.exception("the engine loop died")
            self._fail_all(e)
            self._close_inbox(e)
            raise
        err = Overloaded("the server is shutting down", retry_after=1.0)
        self._fail_all(err)
        self._close_inbox(err)

    def _run_loop(self) -> None:
        while True:
            self._beat = self._clock()
            self._working = False
            if not self._drain(block=not self.engine.has_work):
                break
            self._beat = self._clock()
            if not self.engine.has_work:
                self._stats = self.engine.stats()
                continue
            t0 = time.monotonic()
            self._working = True
            try:
                outputs = self.engine.step()
            except Exception as e:  # a failed step must not hang every waiting client
                log.exception("engine step failed")
                self._fail_after_error(e)
                continue
            self._fresh.clear()
            self._failed_once = False
            for o in outputs:
                entry = self._streams.get(o.request_id)
                if entry is None:
                    continue
                held = self._held.pop(o.request_id, None)
                if held is not None:
                    o = merge_outputs(held, o)
                if not o.finished and entry[0].reqs[entry[1]].background:
                    # A batch row's reader wants the whole result, not tokens as they come: one delivery
                    # per row instead of one per token keeps the event loop free for interactive traffic.
                    self._held[o.request_id] = o
                    continue
                if o.finished:
                    del self._streams[o.request_id]
                self._deliver(entry[0], entry[1], o)
            self._stats = self.engine.stats()
            if self._on_step is not None:
                self._on_step(self.engine, time.monotonic() - t0, outputs)

    def _fail_after_error(self, err: BaseException) -> None:
        """A step that worked before the newest arrivals and fails after them most likely fails because
        of one of them: fail those alone and let the rest step on. Should the next step fail as well,
        the fault lies elsewhere, and everything fails."""
        suspects = [rid for rid in self._fresh if rid in self._streams]
        self._fresh.clear()
        if suspects and not self._failed_once:
            self._failed_once = True
            for rid in suspects:
                self._held.pop(rid, None)
                add, i = self._streams.pop(rid)
                self.engine.abort(rid)
                self._deliver(add, i, err)
            return
        self._fail_all(err)

    def _fail_all(self, err: BaseException) -> None:
        for rid, (add, i) in list(self._streams.items()):
            try:
                self.engine.abort(rid)
            except Exception:  # noqa: BLE001 - a broken engine must not keep the rest from hearing
                log.exception("aborting %s failed", rid)
            self._deliver(add, i, err)
        self._streams.clear()
        self._held.clear()

    def _close_inbox(self, err: BaseException) -> None:
        """Refuse further submissions and fail those that arrived but were never admitted."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    msg = self._inbox.get_nowait()
                except queue.Empty:
                    return
                if isinstance(msg, _Add) and msg.reqs:
                    self._deliver(msg, 0, err)


def merge_outputs(a: RequestOutput, b: RequestOutput) -> RequestOutput:
    """Two consecutive outputs of one request as one: deltas joined, totals and finish from the later."""
    return replace(b, new_token_ids=a.new_token_ids + b.new_token_ids, new_text=a.new_text + b.new_text,
                   new_logprobs=a.new_logprobs + b.new_logprobs,
                   new_text_offsets=a.new_text_offsets + b.new_text_offsets,
                   prompt_logprobs=a.prompt_logprobs if a.prompt_logprobs is not None else b.prompt_logprobs,
                   first_token_time=a.first_token_time if a.first_token_time is not None else b.first_token_time)


__all__ = ["EngineClient", "FinishReason"]
