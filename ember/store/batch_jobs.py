"""Batch inference jobs: records, state transitions, and per-row results that survive kill -9.

A row counts only once its result is committed (BatchResult, keyed by job and custom_id, inserted with
"on conflict do nothing"): a row run twice after a crash lands once. Progress is always counted from
those rows, never from counters kept elsewhere, so what a client reads is what is on disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from ember.errors import AlreadyExists, ResourceNotFound
from ember.store.db import Store
from ember.store.ids import utcnow
from ember.store.tables import BatchJob, BatchResult, Dataset

if TYPE_CHECKING:
    from ember.store.audit_record import AuditRecord

VALIDATING = "JOB_STATE_VALIDATING"
PENDING = "JOB_STATE_PENDING"
RUNNING = "JOB_STATE_RUNNING"
WRITING = "JOB_STATE_WRITING_RESULTS"
COMPLETED = "JOB_STATE_COMPLETED"
FAILED = "JOB_STATE_FAILED"
CANCELLED = "JOB_STATE_CANCELLED"
EXPIRED = "JOB_STATE_EXPIRED"
CANCELLING = "JOB_STATE_CANCELLING"
"""Deleted while active: the runner stops its rows, writes what is done, then marks it CANCELLED."""
ACTIVE = (VALIDATING, PENDING, RUNNING, WRITING, CANCELLING)
"""States the runner owns: it picks these up at start, so a job RUNNING before a crash resumes."""
FINISHED = (COMPLETED, FAILED, CANCELLED, EXPIRED)


@dataclass(frozen=True)
class Progress:
    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed


class BatchJobs:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, job: BatchJob, output_dataset: Dataset | None, *, audit: AuditRecord | None = None
               ) -> BatchJob:
        """The job and (when it is new) its output dataset, in one transaction."""
        try:
            with self.store.session(audit) as s:
                if output_dataset is not None:
                    s.add(output_dataset)
                    s.flush()
                s.add(job)
        except IntegrityError:
            if output_dataset is not None and self._exists(Dataset, job.account_id, output_dataset.dataset_id):
                raise AlreadyExists(f"output dataset {output_dataset.dataset_id!r} already exists") from None
            raise AlreadyExists(f"batch inference job {job.job_id!r} already exists") from None
        return job

    def _exists(self, table: type, *pk: str) -> bool:
        with self.store.session() as s:
            return s.get(table, pk) is not None

    def get(self, account_id: str, job_id: str) -> BatchJob:
        with self.store.session() as s:
            j = s.get(BatchJob, (account_id, job_id))
        if j is None:
            raise ResourceNotFound(f"batch inference job {job_id[:63]!r} not found")
        return j

    def list(self, account_id: str | None = None) -> list[BatchJob]:
        q = select(BatchJob).order_by(BatchJob.created, BatchJob.job_id)
        if account_id is not None:
            q = q.where(BatchJob.account_id == account_id)
        with self.store.session() as s:
            return list(s.scalars(q))

    def count_active(self, account_id: str) -> int:
        """The account's jobs not yet finished (what BatchConfig.max_active_jobs_per_account caps)."""
        with self.store.session() as s:
            return s.scalar(select(func.count()).select_from(BatchJob).where(
                BatchJob.account_id == account_id, BatchJob.state.in_(ACTIVE))) or 0

    def active(self) -> list[BatchJob]:
        """Jobs the runner must drive, oldest first."""
        with self.store.session() as s:
            return list(s.scalars(select(BatchJob).where(BatchJob.state.in_(ACTIVE))
                                  .order_by(BatchJob.created, BatchJob.account_id, BatchJob.job_id)))

    def transition(self, account_id: str, job_id: str, to: str, from_states: tuple[str, ...],
                   status_code: str = "OK", message: str = "", *, audit: AuditRecord | None = None,
                   **times: datetime | int) -> bool:
        """Move a job to `to` only if it is in one of `from_states` (a compare-and-set: the runner and a
        cancelling client never overwrite each other). True if it moved."""
        now = utcnow()
        values: dict = {"state": to, "updated": now, "status_code": status_code, "status_message": message[:2000]}
        if to in FINISHED:
            values["end_time"] = now
        values.update(times)
        with self.store.session() as s:
            res = s.execute(update(BatchJob).where(BatchJob.account_id == account_id, BatchJob.job_id == job_id,
                                                   BatchJob.state.in_(from_states)).values(**values))
            moved = bool(res.rowcount)  # type: ignore[attr-defined]
            if moved and audit is not None:  # an entry only with a change: a job that did not move has none
                audit.add_to(s)
        if moved and audit is not None:
            audit.committed = True
        return moved

    def claim(self, account_id: str, job_id: str, owner: str, lease_s: float) -> bool:
        """Drive this active job unless another live runner does: take it when it is unowned, already
        ours, or its owner's lease ran out (that server stopped or died). Several servers on one database
        then share the jobs without running one twice."""
        now = utcnow()
        with self.store.session() as s:
            res = s.execute(update(BatchJob).where(
                BatchJob.account_id == account_id, BatchJob.job_id == job_id, BatchJob.state.in_(ACTIVE),
                or_(BatchJob.owner == "", BatchJob.owner == owner, BatchJob.lease_until.is_(None),
                    BatchJob.lease_until < now)).values(owner=owner, lease_until=now + timedelta(seconds=lease_s)))
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def renew(self, owner: str, lease_s: float) -> None:
        """Extend the lease of every active job `owner` drives (one statement per tick)."""
        with self.store.session() as s:
            s.execute(update(BatchJob).where(BatchJob.owner == owner, BatchJob.state.in_(ACTIVE))
                      .values(lease_until=utcnow() + timedelta(seconds=lease_s)))

    def release(self, owner: str) -> None:
        """Give up `owner`'s jobs (a server stopping cleanly): another server, or the next start, takes them
        at once instead of after the lease."""
        with self.store.session() as s:
            s.execute(update(BatchJob).where(BatchJob.owner == owner).values(owner="", lease_until=None))

    def delete(self, account_id: str, job_id: str, *, audit: AuditRecord | None = None) -> None:
        with self.store.session(audit) as s:
            s.execute(delete(BatchResult).where(BatchResult.account_id == account_id, BatchResult.job_id == job_id))
            s.execute(delete(BatchJob).where(BatchJob.account_id == account_id, BatchJob.job_id == job_id))

    # -- rows --------------------------------------------------------------------------------------
    def record(self, account_id: str, job_id: str, custom_id: str, ok: bool, line: str, prompt_tokens: int = 0,
               cached_tokens: int = 0, completion_tokens: int = 0) -> bool:
        """Commit one row's outcome; False if the row already had one (it is then left as it was)."""
        insert = postgresql.insert if self.store.dialect == "postgresql" else sqlite.insert
        stmt = insert(BatchResult).values(
            account_id=account_id, job_id=job_id, custom_id=custom_id, ok=ok, line=line,
            prompt_tokens=prompt_tokens, cached_tokens=cached_tokens, completion_tokens=completion_tokens,
            created=utcnow()).on_conflict_do_nothing(index_elements=["account_id", "job_id", "custom_id"])
        # RETURNING says whether this call inserted (psycopg's rowcount does not, for DO NOTHING).
        stmt = stmt.returning(BatchResult.custom_id)
        with self.store.session() as s:
            return s.execute(stmt).first() is not None

    def progress(self, account_id: str, job_id: str) -> Progress:
        q = select(func.coalesce(func.sum(case((BatchResult.ok, 1), else_=0)), 0),
                   func.coalesce(func.sum(case((BatchResult.ok, 0), else_=1)), 0),
                   func.coalesce(func.sum(BatchResult.prompt_tokens), 0),
                   func.coalesce(func.sum(BatchResult.cached_tokens), 0),
                   func.coalesce(func.sum(BatchResult.completion_tokens), 0)).where(
            BatchResult.account_id == account_id, BatchResult.job_id == job_id)
        with self.store.session() as s:
            row = s.execute(q).one()
        return Progress(*(int(x) for x in row))

    def done_ids(self, account_id: str, job_id: str) -> set[str]:
        with self.store.session() as s:
            return set(s.scalars(select(BatchResult.custom_id).where(
                BatchResult.account_id == account_id, BatchResult.job_id == job_id)))

    def succeeded_in_chain(self, account_id: str, job_id: str) -> set[str]:
        """custom_ids with a successful result in `job_id`'s ancestors (continuedFromJobName, transitively)."""
        out: set[str] = set()
        seen: set[str] = {job_id}
        parent = self.get(account_id, job_id).continued_from
        with self.store.session() as s:
            while parent and parent not in seen:
                seen.add(parent)
                out.update(s.scalars(select(BatchResult.custom_id).where(
                    BatchResult.account_id == account_id, BatchResult.job_id == parent, BatchResult.ok)))
                p = s.get(BatchJob, (account_id, parent))
                parent = p.continued_from if p is not None else ""
        return out

    def lines(self, account_id: str, job_id: str, ok: bool) -> Iterator[str]:
        """Committed output lines of one kind, in custom_id order (fetched in pages, never all at once)."""
        last = ""
        while True:
            with self.store.session() as s:
                page = list(s.execute(select(BatchResult.custom_id, BatchResult.line).where(
                    BatchResult.account_id == account_id, BatchResult.job_id == job_id, BatchResult.ok == ok,
                    BatchResult.custom_id > last).order_by(BatchResult.custom_id).limit(1000)))
            if not page:
                return
            for _cid, line in page:
                yield line
            last = page[-1][0]
