"""OpenAI's Batch API over the same datasets and job runner: `POST /v1/files`, `GET /v1/files/{id}[/content]`,
`POST /v1/batches`, `GET /v1/batches[/{id}]`, `POST /v1/batches/{id}/cancel`.

An uploaded file is a dataset of the caller's account (id `file-…`); a batch is a batch inference job
(id `batch-…`, api "openai") whose rows are OpenAI lines (`custom_id`, `method`, `url`, `body` with
`model`) and whose output lines are OpenAI's BatchRequestOutput. Output and error files are the job's
output dataset's two files, named `{dataset}.results` and `{dataset}.errors`.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from ember.errors import FailedPrecondition, InvalidRequest, NotFound, PermissionDenied, Unauthorized
from ember.gateway.batch_rows import ENDPOINTS
from ember.gateway.caps import check_active_jobs, check_datasets
from ember.gateway.datasets import receive_file
from ember.gateway.job_lifecycle import NewJob, cancel_job, store_job
from ember.gateway.services import BatchDep, BatchServices
from ember.http.audit import OpenAIChange
from ember.http.deps import InferenceAuth, StateDep
from ember.platform.auth import Principal
from ember.store import batch_jobs as st
from ember.store.dataset_files import ERRORS_FILE, RESULTS_FILE
from ember.store.datasets import READY, UPLOADING
from ember.store.ids import epoch
from ember.store.tables import BatchJob, Dataset

router = APIRouter(tags=["openai-batch"])
_SUFFIX = {"results": RESULTS_FILE, "errors": ERRORS_FILE}
_STATUS = {st.VALIDATING: "validating", st.PENDING: "in_progress", st.RUNNING: "in_progress",
           st.WRITING: "finalizing", st.COMPLETED: "completed", st.FAILED: "failed", st.EXPIRED: "expired",
           st.CANCELLING: "cancelling", st.CANCELLED: "cancelled"}
_WINDOWS = {"24h": timedelta(hours=24)}
"""completion_window -> the batch's lifetime: OpenAI's API names the window and reports expires_at from
it, so a batch expires when its window closes whatever the Gateway jobs' configured lifetime is."""


class CreateBatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(max_length=200)
    endpoint: str = Field(max_length=200)
    completion_window: str = Field(max_length=16)
    metadata: dict[str, str] | None = Field(default=None, max_length=16, fail_fast=True)


def _account(p: Principal) -> str:
    """The caller's account, where its role may use batch data: the Gateway's rule for datasets and jobs
    (admin and user keys; an inference-user key may only run inference: 403). Every file and batch is
    then looked up within this account only, so another account's id is a 404.

    An open server or a static key has no account: 401."""
    if p.user_id is None:
        raise Unauthorized("the Batch API needs an API key of an account (ember accounts create)")
    if not p.manages:
        raise PermissionDenied("inference-user keys may only run inference, not use the Files or Batches API")
    return p.account_id


def _file_ref(b: BatchServices, account_id: str, file_id: str) -> tuple[Dataset, str]:
    """A file id -> (its dataset, the file's name in it); 404 for anything unknown or unready."""
    ds_id, _, kind = file_id.partition(".")
    d = b.datasets.find(account_id, ds_id) if ds_id.startswith(("file-", "batch-")) else None
    if d is None or d.state != READY or (kind and kind not in _SUFFIX):
        raise NotFound(f"no file {file_id[:100]!r}", param="file_id", code="not_found")
    name = _SUFFIX[kind] if kind else (d.filenames[0] if d.filenames else "")
    if name not in d.filenames:
        raise NotFound(f"no file {file_id[:100]!r}", param="file_id", code="not_found")
    return d, name


def _file_json(d: Dataset, file_id: str, name: str, size: int) -> dict:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": epoch(d.created), "filename": name,
            "purpose": "batch_output" if d.source_job else "batch", "status": "processed"}


@router.post("/v1/files")
async def create_file(request: Request, state: StateDep, b: BatchDep, p: InferenceAuth,
                      change: OpenAIChange) -> dict:
    account_id = _account(p)
    await asyncio.to_thread(check_datasets, b, account_id)
    file_id = f"file-{uuid.uuid4().hex[:24]}"
    if change is not None:
        change.resource = f"accounts/{account_id}/files/{file_id}"
    await asyncio.to_thread(b.datasets.create, account_id, file_id, display_name="openai batch input",
                            created_by=p.email)
    fields: dict[str, str] = {}
    try:
        d, name, size = await receive_file(request, b, state.model.tokenizer, account_id, file_id, fields,
                                           audit=change, check_fields=_check_purpose)
    except BaseException:
        await asyncio.to_thread(b.datasets.delete, account_id, file_id)
        await asyncio.to_thread(b.files.remove, account_id, file_id)
        raise
    return _file_json(d, file_id, name, size)


def _check_purpose(fields: dict[str, str]) -> None:
    if fields.get("purpose") != "batch":
        raise InvalidRequest("purpose must be \"batch\" (the only kind of file this server keeps)", param="purpose")


@router.get("/v1/files/{file_id}")
def get_file(file_id: str, b: BatchDep, p: InferenceAuth) -> dict:
    d, name = _file_ref(b, _account(p), file_id)
    path = b.files.path_of(d.account_id, d.dataset_id, name)
    return _file_json(d, file_id, name, path.stat().st_size if path.is_file() else 0)


@router.get("/v1/files/{file_id}/content")
def file_content(file_id: str, b: BatchDep, p: InferenceAuth) -> FileResponse:
    d, name = _file_ref(b, _account(p), file_id)
    path = b.files.path_of(d.account_id, d.dataset_id, name)
    if not path.is_file():
        raise NotFound(f"no file {file_id[:100]!r}", param="file_id", code="not_found")
    return FileResponse(path, media_type="application/jsonl")


def batch_json(j: BatchJob, b: BatchServices) -> dict:
    p = b.jobs.progress(j.account_id, j.job_id)
    out_ready = (d := b.datasets.find(j.account_id, j.output_dataset_id)) is not None and d.state == READY
    t = {"in_progress_at": j.run_start, "completed_at": j.end_time if j.state == st.COMPLETED else None,
         "failed_at": j.end_time if j.state == st.FAILED else None,
         "expired_at": j.end_time if j.state == st.EXPIRED else None,
         "cancelled_at": j.end_time if j.state == st.CANCELLED else None}
    out: dict = {
        "id": j.job_id, "object": "batch", "endpoint": j.endpoint, "input_file_id": j.input_dataset_id,
        "completion_window": "24h", "status": _STATUS.get(j.state, "failed"), "created_at": epoch(j.created),
        "expires_at": epoch(j.expire_time), "model": j.model, "metadata": dict(j.meta or {}) or None,
        "output_file_id": f"{j.output_dataset_id}.results" if out_ready and p.succeeded else None,
        "error_file_id": f"{j.output_dataset_id}.errors" if out_ready and p.failed else None,
        "request_counts": {"total": j.total_rows, "completed": p.succeeded, "failed": p.failed},
        "errors": ({"object": "list", "data": [{"code": j.status_code.lower(), "message": j.status_message}]}
                   if j.state == st.FAILED else None),
        "usage": {"input_tokens": p.prompt_tokens, "output_tokens": p.completion_tokens,
                  "total_tokens": p.prompt_tokens + p.completion_tokens,
                  "input_tokens_details": {"cached_tokens": p.cached_tokens},
                  "output_tokens_details": {"reasoning_tokens": 0}},
    }
    for k, v in t.items():
        out[k] = epoch(v) if v is not None else None
    return out


def _batch(b: BatchServices, account_id: str, batch_id: str) -> BatchJob:
    try:
        j = b.jobs.get(account_id, batch_id)
    except NotFound:
        j = None
    if j is None or j.api != "openai":
        raise NotFound(f"no batch {batch_id[:100]!r}", param="batch_id", code="not_found")
    return j


@router.post("/v1/batches")
def create_batch(body: CreateBatchBody, request: Request, state: StateDep, b: BatchDep, p: InferenceAuth,
                 change: OpenAIChange) -> dict:
    account_id = _account(p)
    if change is not None:
        change.note(input_file_id=body.input_file_id, endpoint=body.endpoint, metadata=body.metadata)
    if body.endpoint not in ENDPOINTS:
        raise InvalidRequest(f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint")
    if body.completion_window not in _WINDOWS:
        raise InvalidRequest("completion_window must be \"24h\"", param="completion_window")
    d = b.datasets.find(account_id, body.input_file_id) if body.input_file_id.startswith("file-") else None
    if d is None or d.source_job:
        raise NotFound(f"no input file {body.input_file_id[:100]!r}", param="input_file_id", code="not_found")
    if d.state == UPLOADING:
        raise FailedPrecondition("the input file is still uploading")
    check_active_jobs(b, account_id)
    job_id = f"batch-{uuid.uuid4().hex[:24]}"
    if change is not None:
        change.resource = f"accounts/{account_id}/batches/{job_id}"
    job = store_job(b, request, NewJob(
        account_id=account_id, job_id=job_id, api="openai", model=state.model.model_id,
        input_dataset_id=d.dataset_id, output_dataset_id=f"{job_id}-output",
        lifetime=_WINDOWS[body.completion_window], endpoint=body.endpoint, meta=dict(body.metadata or {})),
        p, change)
    return batch_json(job, b)


@router.get("/v1/batches/{batch_id}")
def get_batch(batch_id: str, b: BatchDep, p: InferenceAuth) -> dict:
    return batch_json(_batch(b, _account(p), batch_id), b)


@router.post("/v1/batches/{batch_id}/cancel")
def cancel_batch(batch_id: str, request: Request, b: BatchDep, p: InferenceAuth, change: OpenAIChange) -> dict:
    account_id = _account(p)
    if change is not None:
        change.resource = f"accounts/{account_id}/batches/{batch_id[:100]}"
    j = _batch(b, account_id, batch_id)
    cancel_job(b, request, account_id, j.job_id, change)
    return batch_json(b.jobs.get(account_id, j.job_id), b)


@router.get("/v1/batches")
def list_batches(b: BatchDep, p: InferenceAuth, limit: int = Query(20, ge=1, le=100),
                 after: str | None = Query(None, max_length=200)) -> dict:
    account_id = _account(p)
    jobs = [j for j in reversed(b.jobs.list(account_id)) if j.api == "openai"]  # newest first, as OpenAI
    if after:
        ids = [j.job_id for j in jobs]
        jobs = jobs[ids.index(after) + 1:] if after in ids else []
    page = jobs[:limit]
    data = [batch_json(j, b) for j in page]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(jobs) > limit}
