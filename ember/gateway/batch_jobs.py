"""Batch inference jobs (Gateway paths): create, get, list, delete (= cancel while the job is active).

The routes only write records; the runner (batch_runner.py) inside the same server drives every job that
is active in the store, so a job created here, or left RUNNING by a crash, runs without further calls.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from fastapi import APIRouter, Query, Request
from pydantic import Field

from ember.errors import FailedPrecondition, InvalidRequest, ResourceNotFound
from ember.gateway.caps import check_active_jobs
from ember.gateway.job_lifecycle import NewJob, cancel_job, store_job
from ember.gateway.protocol import Wire
from ember.gateway.services import BatchDep
from ember.gateway.wire import list_response
from ember.http.audit import GatewayChange
from ember.http.deps import GatewayAuth, StateDep, resolve_served
from ember.json_depth import loads_bounded
from ember.store import batch_jobs as st
from ember.store.batch_jobs import Progress
from ember.store.datasets import READY, UPLOADING
from ember.store.ids import check_id, rfc3339
from ember.store.tables import BatchJob

router = APIRouter(tags=["gateway"])
_BASE = "/v1/accounts/{account_id}/batchInferenceJobs"
_FIELDS = ("name", "displayName", "state", "model", "createTime", "updateTime", "inputDatasetId",
           "outputDatasetId", "createdBy")


class InferenceParameters(Wire):
    maxTokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0)
    topP: float | None = Field(default=None, ge=0, le=1)
    topK: int | None = Field(default=None, ge=0)
    n: int | None = Field(default=None, ge=1, le=128)
    extraBody: str | None = Field(default=None, max_length=65536)


class BatchJobBody(Wire):
    """gatewayBatchInferenceJob as a client sends it; read-only fields are accepted and ignored."""

    displayName: str | None = Field(default=None, max_length=63)
    model: str | None = Field(default=None, max_length=255)
    inputDatasetId: str | None = Field(default=None, max_length=200)
    outputDatasetId: str | None = Field(default=None, max_length=200)
    inferenceParameters: InferenceParameters | None = None
    precision: str | None = Field(default=None, max_length=40)
    continuedFromJobName: str | None = Field(default=None, max_length=200)
    name: str | None = None
    createTime: str | None = None
    createdBy: str | None = None
    state: str | None = None
    status: dict | None = None
    updateTime: str | None = None
    jobProgress: dict | None = None
    expireTime: str | None = None


def job_progress(j: BatchJob, p: Progress) -> dict:
    total = j.total_rows
    if j.state == st.COMPLETED:
        percent = 100
    else:
        percent = min(100, p.processed * 100 // total) if total else 0
    return {"percent": percent, "totalInputRequests": total, "totalProcessedRequests": p.processed,
            "successfullyProcessedRequests": p.succeeded, "failedRequests": p.failed, "outputRows": p.succeeded,
            "inputTokens": p.prompt_tokens, "outputTokens": p.completion_tokens,
            "cachedInputTokenCount": p.cached_tokens}


def job_json(j: BatchJob, p: Progress) -> dict:
    a = j.account_id
    out: dict = {
        "name": f"accounts/{a}/batchInferenceJobs/{j.job_id}", "displayName": j.display_name,
        "createTime": rfc3339(j.created), "createdBy": j.created_by, "state": j.state,
        "status": {"code": j.status_code, "message": j.status_message}, "model": j.model,
        "inputDatasetId": f"accounts/{a}/datasets/{j.input_dataset_id}",
        "outputDatasetId": f"accounts/{a}/datasets/{j.output_dataset_id}",
        "inferenceParameters": dict(j.params), "updateTime": rfc3339(j.updated), "precision": j.precision,
        "jobProgress": job_progress(j, p), "expireTime": rfc3339(j.expire_time),
    }
    if j.continued_from:
        out["continuedFromJobName"] = f"accounts/{a}/batchInferenceJobs/{j.continued_from}"
    return out


def _local_id(ref: str, account_id: str, kind: str, param: str) -> str:
    """`x` or `accounts/{account_id}/{kind}/x` -> x (another account's name is refused)."""
    if "/" in ref:
        parts = ref.split("/")
        if len(parts) != 4 or parts[0] != "accounts" or parts[2] != kind:
            raise InvalidRequest(f"{param} must be an id or accounts/{account_id}/{kind}/ID", param=param)
        if parts[1] != account_id:
            raise ResourceNotFound(f"{param} {ref[:120]!r} not found")
        ref = parts[3]
    return check_id(ref, param)


def _params_json(ip: InferenceParameters | None) -> dict:
    if ip is None:
        return {}
    out = ip.model_dump(exclude_none=True)
    if ip.extraBody is not None and ip.extraBody.strip():
        try:
            extra = loads_bounded(ip.extraBody, "inferenceParameters.extraBody")
        except ValueError:
            raise InvalidRequest("inferenceParameters.extraBody must be a JSON object as a string",
                                 param="inferenceParameters.extraBody") from None
        if not isinstance(extra, dict):
            raise InvalidRequest("inferenceParameters.extraBody must be a JSON object as a string",
                                 param="inferenceParameters.extraBody")
        if "model" in extra:
            raise InvalidRequest("extraBody must not set model: the job's model is used",
                                 param="inferenceParameters.extraBody")
    return out


@router.post(_BASE)
def create_job(account_id: str, body: BatchJobBody, request: Request, state: StateDep, b: BatchDep,
               p: GatewayAuth, change: GatewayChange,
               job_id: str | None = Query(None, alias="batchInferenceJobId", max_length=200)) -> dict:
    job_id = check_id(job_id, "batchInferenceJobId") if job_id else f"bij-{uuid.uuid4().hex[:8]}"
    parent: BatchJob | None = None
    if body.continuedFromJobName:
        pid = _local_id(body.continuedFromJobName, account_id, "batchInferenceJobs", "continuedFromJobName")
        try:
            parent = b.jobs.get(account_id, pid)
        except ResourceNotFound:
            raise ResourceNotFound(f"continuedFromJobName: batch inference job {pid!r} not found") from None
        if parent.state not in st.FINISHED:
            raise FailedPrecondition(f"job {pid!r} is {parent.state}; only a finished, failed, cancelled or "
                                     "expired job can be continued")
    model = body.model or (parent.model if parent else None)
    if not model:
        raise InvalidRequest("model is required (unless continuedFromJobName is set)", param="model")
    served = resolve_served(state, model)
    in_ref = body.inputDatasetId or (parent.input_dataset_id if parent else None)
    if not in_ref:
        raise InvalidRequest("inputDatasetId is required (unless continuedFromJobName is set)",
                             param="inputDatasetId")
    input_id = _local_id(in_ref, account_id, "datasets", "inputDatasetId")
    d = b.datasets.find(account_id, input_id)
    if d is None:
        raise ResourceNotFound(f"input dataset {input_id!r} not found")
    if d.state == UPLOADING:
        raise FailedPrecondition(f"input dataset {input_id!r} is still UPLOADING: upload its file first")
    if d.state != READY:
        raise FailedPrecondition(f"input dataset {input_id!r} is {d.state}")
    params = _params_json(body.inferenceParameters) if body.inferenceParameters else (
        dict(parent.params) if parent else {})
    out_id = (_local_id(body.outputDatasetId, account_id, "datasets", "outputDatasetId")
              if body.outputDatasetId else f"{job_id[:55]}-output")
    if b.datasets.find(account_id, out_id) is not None:
        raise FailedPrecondition(f"output dataset {out_id!r} already exists; name a new one or leave "
                                 "outputDatasetId out")
    check_active_jobs(b, account_id)
    change.resource = f"accounts/{account_id}/batchInferenceJobs/{job_id}"
    change.note(model=body.model, inputDatasetId=input_id, outputDatasetId=out_id, displayName=body.displayName,
                continuedFromJobName=body.continuedFromJobName, inferenceParameters={
                    k: v for k, v in params.items() if k != "extraBody"})
    job = store_job(b, request, NewJob(
        account_id=account_id, job_id=job_id, api="fireworks", model=served.model_id, input_dataset_id=input_id,
        output_dataset_id=out_id, lifetime=timedelta(hours=b.config.job_ttl_h),
        display_name=body.displayName or "", params=params, precision=body.precision or "PRECISION_UNSPECIFIED",
        continued_from=parent.job_id if parent else ""), p, change)
    return job_json(job, Progress())


@router.get(_BASE)
def list_jobs(account_id: str, b: BatchDep, p: GatewayAuth,
              page_size: int | None = Query(None, alias="pageSize"),
              page_token: str | None = Query(None, alias="pageToken", max_length=512),
              filter: str | None = Query(None, max_length=512),
              order_by: str | None = Query(None, alias="orderBy", max_length=256),
              read_mask: str | None = Query(None, alias="readMask", max_length=512)) -> dict:
    items = [job_json(j, b.jobs.progress(account_id, j.job_id)) for j in b.jobs.list(account_id)]
    return list_response("batchInferenceJobs", items, page_size, page_token, filter, order_by or "createTime",
                         _FIELDS)


@router.get(_BASE + "/{job_id}")
def get_job(account_id: str, job_id: str, b: BatchDep, p: GatewayAuth,
            read_mask: str | None = Query(None, alias="readMask", max_length=512)) -> dict:
    check_id(job_id, "batchInferenceJobId")
    j = b.jobs.get(account_id, job_id)
    return job_json(j, b.jobs.progress(account_id, job_id))


@router.delete(_BASE + "/{job_id}")
def delete_job(account_id: str, job_id: str, request: Request, b: BatchDep, p: GatewayAuth,
               change: GatewayChange) -> dict:
    """An active job is cancelled (it stays, CANCELLED, with its partial results written to the output
    dataset); a finished one is removed."""
    check_id(job_id, "batchInferenceJobId")
    j = b.jobs.get(account_id, job_id)
    if j.state in st.FINISHED:
        change.note(action="delete")
        b.jobs.delete(account_id, job_id, audit=change)
        return {}
    change.note(action="cancel", state=j.state)
    cancel_job(b, request, account_id, job_id, change)
    return {}
