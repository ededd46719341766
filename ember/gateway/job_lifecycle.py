"""Creating and cancelling a batch job: one way for both batch APIs (Gateway jobs and OpenAI batches).

A job and its output dataset are stored together; the dataset stays UPLOADING until the runner writes
the job's results into it. The runner in this server is woken so it need not wait for its next poll.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta

from fastapi import Request

from ember.gateway.services import BatchServices
from ember.platform.auth import Principal
from ember.store import batch_jobs as st
from ember.store.audit_log import AuditRecord
from ember.store.datasets import UPLOADING
from ember.store.ids import utcnow
from ember.store.tables import BatchJob, Dataset

CANCEL_WAIT_S = 5.0
"""How long a cancel waits for the runner to stop the job's rows, so the answer already says cancelled."""


@dataclass(frozen=True)
class NewJob:
    """A batch job as either API asks for it (ids already checked, input dataset READY)."""

    account_id: str
    job_id: str
    api: str
    """"fireworks" or "openai": the job's row and output formats."""
    model: str
    input_dataset_id: str
    output_dataset_id: str
    lifetime: timedelta
    """Unfinished this long after creation, the job ends EXPIRED."""
    display_name: str = ""
    params: dict = field(default_factory=dict)
    precision: str = "PRECISION_UNSPECIFIED"
    continued_from: str = ""
    endpoint: str = ""
    meta: dict = field(default_factory=dict)


def store_job(b: BatchServices, request: Request, new: NewJob, p: Principal,
               audit: AuditRecord | None) -> BatchJob:
    """Store the job (VALIDATING, run and metered as the caller's key) with its empty output dataset."""
    now = utcnow()
    a = new.account_id
    out = Dataset(account_id=a, dataset_id=new.output_dataset_id, display_name=f"output of {new.job_id}"[:63],
                  state=UPLOADING, example_count=0, estimated_tokens=0, bytes=0, format="FORMAT_UNSPECIFIED",
                  filenames=[], user_uploaded=False, source_job=f"accounts/{a}/batchInferenceJobs/{new.job_id}",
                  created_by=p.email, created=now, updated=now)
    job = BatchJob(account_id=a, job_id=new.job_id, display_name=new.display_name, created_by=p.email,
                   key_id=p.key_id, state=st.VALIDATING, status_code="OK", status_message="", model=new.model,
                   input_dataset_id=new.input_dataset_id, output_dataset_id=new.output_dataset_id,
                   params=new.params, precision=new.precision, continued_from=new.continued_from, total_rows=0,
                   created=now, updated=now, expire_time=now + new.lifetime, api=new.api, endpoint=new.endpoint,
                   meta=new.meta, owner="")
    b.jobs.create(job, out, audit=audit)
    runner = getattr(request.app.state, "batch_runner", None)
    if runner is not None:
        runner.wake_soon()
    return job


def cancel_job(b: BatchServices, request: Request, account_id: str, job_id: str,
               audit: AuditRecord | None) -> None:
    """Move an active job to CANCELLING (a finished one is left as it is); the runner stops its rows and
    writes what is done. Waits a little so a client that reads the job next sees CANCELLED."""
    if not b.jobs.transition(account_id, job_id, st.CANCELLING, st.ACTIVE, "CANCELLED", "cancelled by the user",
                             audit=audit):
        return
    runner = getattr(request.app.state, "batch_runner", None)
    if runner is None:
        return
    runner.wake_soon()
    deadline = time.monotonic() + CANCEL_WAIT_S
    while time.monotonic() < deadline and b.jobs.get(account_id, job_id).state == st.CANCELLING:
        time.sleep(0.05)
