"""Datasets (Gateway paths): create, get, list, update, delete, `:upload`, `:getDownloadEndpoint`, and the
signed download URLs themselves (served here, no bearer key).

Custom-method routes (`{id}:upload`) are registered before the `{id}` routes, so `{id}` never swallows
`x:upload`. Handlers that only touch the database are plain functions (FastAPI runs them in its thread
pool); the upload is async because it streams the request body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from functools import partial

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import Field

from ember.errors import InvalidRequest, ResourceNotFound
from ember.gateway.caps import check_datasets
from ember.gateway.protocol import Wire
from ember.gateway.services import BatchDep, BatchServices
from ember.gateway.signing import DOWNLOAD_PREFIX, own_address
from ember.gateway.uploads import stream_file_part
from ember.gateway.wire import list_response
from ember.http.audit import GatewayChange
from ember.http.deps import GatewayAuth, StateDep
from ember.store.audit_record import AuditRecord
from ember.store.dataset_files import safe_filename, scan_batch_file
from ember.store.datasets import FORMATS
from ember.store.ids import check_id, epoch, rfc3339, utcnow
from ember.store.tables import BatchJob, Dataset
from ember.tokenizer import Tokenizer

router = APIRouter(tags=["gateway"])
_BASE = "/v1/accounts/{account_id}/datasets"
_FIELDS = ("name", "displayName", "state", "format", "createTime", "updateTime", "exampleCount", "sourceJobName")


class DatasetFields(Wire):
    """gatewayDataset as a client may send it; read-only fields are accepted and ignored."""

    displayName: str | None = Field(default=None, max_length=63)
    exampleCount: int | str | None = None
    userUploaded: dict | None = None
    format: str | None = None
    externalUrl: str | None = None
    sourceJobName: str | None = None
    name: str | None = None
    createTime: str | None = None
    updateTime: str | None = None
    state: str | None = None
    status: dict | None = None
    createdBy: str | None = None
    estimatedTokenCount: str | int | None = None
    averageTurnCount: float | None = None


class CreateDatasetBody(Wire):
    datasetId: str = Field(max_length=200)
    dataset: DatasetFields
    sourceDatasetId: str | None = None
    filter: str | None = None


def dataset_json(d: Dataset) -> dict:
    out: dict = {
        "name": f"accounts/{d.account_id}/datasets/{d.dataset_id}", "displayName": d.display_name,
        "createTime": rfc3339(d.created), "updateTime": rfc3339(d.updated), "state": d.state,
        "status": {"code": "OK", "message": ""}, "exampleCount": str(d.example_count),
        "estimatedTokenCount": str(d.estimated_tokens), "format": d.format, "createdBy": d.created_by,
    }
    if d.user_uploaded:
        out["userUploaded"] = {}
    if d.source_job:
        out["sourceJobName"] = d.source_job
    return out


PIECE_CHARS = 256 * 1024
"""Text tokenized at once while an upload is counted. The tokenizer's output for a text costs some hundred
bytes a token while it exists: a 30 MB file tokenized in one call peaked at 2.5 GB. In pieces of this
size the count needs a few tens of MB whatever the file holds."""


def text_pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """`text` in pieces of at most `size` characters, each cut after a space or a newline where one is
    near, so that the pieces' token counts add up to the whole text's, or within a token a piece."""
    start = 0
    while len(text) - start > size:
        end = start + size
        cut = max(text.rfind(" ", end - 1024, end), text.rfind("\n", end - 1024, end))
        end = cut + 1 if cut > start else end
        yield text[start:end]
        start = end
    yield text[start:]


def _count_texts(tok: Tokenizer, texts: list[str]) -> int:
    try:  # one call for the batch: the tokenizer spreads it over cores and releases the GIL meanwhile
        return sum(len(e.ids) for e in tok.hf.encode_batch(texts, add_special_tokens=False))
    except (TypeError, ValueError):  # a text it cannot take (a lone surrogate): count the others one by one
        n = 0
        for t in texts:
            try:
                n += len(tok.encode(t, add_special_tokens=False))
            except (TypeError, ValueError):
                pass
        return n


def _prompt_items(body: dict) -> list:
    p = body.get("prompt")
    items = [p] if isinstance(p, str) or (isinstance(p, list) and p and isinstance(p[0], int)) else p
    return items if isinstance(items, list) else []


def prompt_tokens(tok: Tokenizer, bodies: list[dict]) -> int:
    """Tokens of the rows' prompts (text, token ids, or a list of either); anything else counts 0 (rows are
    only checked for structure at upload: a bad prompt is that row's error when the job runs). Texts are
    tokenized in batches of at most PIECE_CHARS characters, a longer text in pieces."""
    n = 0
    batch: list[str] = []
    chars = 0
    for body in bodies:
        for item in _prompt_items(body):
            if isinstance(item, list):
                n += len(item)
            elif isinstance(item, int):
                n += 1
            elif isinstance(item, str):
                for piece in text_pieces(item):
                    if batch and chars + len(piece) > PIECE_CHARS:
                        n += _count_texts(tok, batch)
                        batch, chars = [], 0
                    batch.append(piece)
                    chars += len(piece)
    return n + (_count_texts(tok, batch) if batch else 0)


@router.post(_BASE)
def create_dataset(account_id: str, body: CreateDatasetBody, b: BatchDep, p: GatewayAuth,
                   change: GatewayChange) -> dict:
    change.resource = f"accounts/{account_id}/datasets/{body.datasetId}"
    change.note(displayName=body.dataset.displayName, format=body.dataset.format,
                exampleCount=body.dataset.exampleCount)
    check_id(body.datasetId, "datasetId")
    if body.sourceDatasetId or body.filter:
        raise InvalidRequest("deriving a dataset from another (sourceDatasetId, filter) is not supported",
                             param="sourceDatasetId")
    fmt = body.dataset.format or "FORMAT_UNSPECIFIED"
    if fmt not in FORMATS:
        raise InvalidRequest(f"format must be one of {', '.join(FORMATS)}", param="dataset.format")
    if body.dataset.externalUrl:
        raise InvalidRequest("externalUrl datasets are not supported; upload the file with :upload",
                             param="dataset.externalUrl")
    declared = body.dataset.exampleCount
    try:
        count = int(declared) if declared not in (None, "") else 0
    except ValueError:
        raise InvalidRequest("exampleCount must be an integer", param="dataset.exampleCount") from None
    check_datasets(b, account_id)
    d = b.datasets.create(account_id, body.datasetId, display_name=body.dataset.displayName or "",
                          example_count=max(0, count), fmt=fmt, created_by=p.email, audit=change)
    return dataset_json(d)


async def receive_file(request: Request, b: BatchServices, tok: Tokenizer, account_id: str, dataset_id: str,
                       fields: dict[str, str] | None = None, *, audit: AuditRecord | None = None,
                       check_fields: Callable[[dict[str, str]], None] | None = None) -> tuple[Dataset, str, int]:
    """Stream a multipart upload into the dataset's directory, check it as a batch input file, and only
    then rename it into place and mark the dataset READY: (dataset, file name, bytes). `check_fields`
    refuses the upload by its other parts before anything is kept; `audit` commits with READY."""
    limit = b.config.max_upload_mb * 1024 * 1024
    f, tmp = await asyncio.to_thread(b.files.open_temp, account_id, dataset_id)
    try:
        size, client_name = await stream_file_part(request, f, limit, fields)
        name = safe_filename(client_name)
        if check_fields is not None:
            check_fields(fields if fields is not None else {})
        if audit is not None:
            audit.note(filename=name, bytes=size)
        # Checked before it replaces anything: a bad file leaves the dataset as it was (UPLOADING).
        f.flush()
        scan = await asyncio.to_thread(scan_batch_file, tmp, name, lambda bodies: prompt_tokens(tok, bodies))
        await asyncio.to_thread(b.files.commit, f, tmp, b.files.path_of(account_id, dataset_id, name))
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise
    d = await asyncio.to_thread(partial(b.datasets.mark_ready, audit=audit), account_id, dataset_id, [name],
                                size, scan.rows, scan.tokens)
    return d, name, size


@router.post(_BASE + "/{dataset_id}:upload")
async def upload_dataset(account_id: str, dataset_id: str, request: Request, state: StateDep, b: BatchDep,
                         p: GatewayAuth, change: GatewayChange) -> dict:
    check_id(dataset_id, "datasetId")
    await asyncio.to_thread(b.datasets.check_uploadable, account_id, dataset_id)
    d, name, size = await receive_file(request, b, state.model.tokenizer, account_id, dataset_id, audit=change)
    return {"id": f"accounts/{account_id}/datasets/{dataset_id}", "object": "file", "bytes": size,
            "created_at": epoch(d.updated), "filename": name, "purpose": "dataset"}


def _lineage(b: BatchServices, account_id: str, d: Dataset) -> list[Dataset]:
    """The dataset, then the output datasets of the jobs its job continued from, newest first."""
    chain, seen = [d], {d.dataset_id}
    job_id = d.source_job.rsplit("/", 1)[-1] if d.source_job else ""
    while job_id:
        with b.store.session() as s:
            job = s.get(BatchJob, (account_id, job_id))
            parent = s.get(BatchJob, (account_id, job.continued_from)) if job and job.continued_from else None
        if parent is None:
            break
        out = b.datasets.find(account_id, parent.output_dataset_id)
        if out is None or out.dataset_id in seen:
            break
        chain.append(out)
        seen.add(out.dataset_id)
        job_id = parent.job_id
    return chain


@router.get(_BASE + "/{dataset_id}:getDownloadEndpoint")
def download_endpoint(account_id: str, dataset_id: str, request: Request, b: BatchDep, p: GatewayAuth,
                      download_lineage: bool = Query(False, alias="downloadLineage"),
                      read_mask: str | None = Query(None, alias="readMask", max_length=512)) -> dict:
    check_id(dataset_id, "datasetId")
    d = b.datasets.get(account_id, dataset_id)
    base = b.public_url or own_address(request)
    urls: dict[str, str] = {}
    for ds in _lineage(b, account_id, d) if download_lineage else [d]:
        for name in ds.filenames:
            key = f"{ds.dataset_id}/{name}" if download_lineage else name
            urls[key] = b.signer.url(base, account_id, ds.dataset_id, name, p.key_id)
    return {"filenameToSignedUrls": urls}


@router.get(_BASE)
def list_datasets(account_id: str, b: BatchDep, p: GatewayAuth,
                  page_size: int | None = Query(None, alias="pageSize"),
                  page_token: str | None = Query(None, alias="pageToken", max_length=512),
                  filter: str | None = Query(None, max_length=512),
                  order_by: str | None = Query(None, alias="orderBy", max_length=256),
                  read_mask: str | None = Query(None, alias="readMask", max_length=512)) -> dict:
    items = [dataset_json(d) for d in b.datasets.list(account_id)]
    return list_response("datasets", items, page_size, page_token, filter, order_by, _FIELDS)


@router.get(_BASE + "/{dataset_id}")
def get_dataset(account_id: str, dataset_id: str, b: BatchDep, p: GatewayAuth,
                read_mask: str | None = Query(None, alias="readMask", max_length=512)) -> dict:
    check_id(dataset_id, "datasetId")
    return dataset_json(b.datasets.get(account_id, dataset_id))


@router.patch(_BASE + "/{dataset_id}")
def update_dataset(account_id: str, dataset_id: str, body: DatasetFields, b: BatchDep, p: GatewayAuth,
                   change: GatewayChange) -> dict:
    change.note(displayName=body.displayName)
    check_id(dataset_id, "datasetId")
    with b.store.session(change) as s:
        d = s.get(Dataset, (account_id, dataset_id))
        if d is None:
            raise ResourceNotFound(f"dataset {dataset_id!r} not found")
        if body.displayName is not None:
            d.display_name = body.displayName
        d.updated = utcnow()
    return dataset_json(d)


@router.delete(_BASE + "/{dataset_id}")
def delete_dataset(account_id: str, dataset_id: str, b: BatchDep, p: GatewayAuth, change: GatewayChange) -> dict:
    check_id(dataset_id, "datasetId")
    b.datasets.delete(account_id, dataset_id, audit=change)
    b.files.remove(account_id, dataset_id)
    return {}


@router.get(DOWNLOAD_PREFIX + "/{account_id}/{dataset_id}/{filename}")
def download_file(account_id: str, dataset_id: str, filename: str, b: BatchDep,
                  expires: str = Query("", max_length=20), kid: str = Query("", max_length=40),
                  signature: str = Query("", max_length=128)) -> FileResponse:
    """A signed URL from :getDownloadEndpoint: the signature is the credential (no bearer key)."""
    b.signer.check(account_id, dataset_id, filename, expires, kid, signature)
    d = b.datasets.find(account_id, dataset_id)
    if d is None or filename not in d.filenames:
        raise ResourceNotFound("the file no longer exists")
    path = b.files.path_of(account_id, dataset_id, filename)
    if not path.is_file():
        raise ResourceNotFound("the file no longer exists")
    return FileResponse(path, media_type="application/jsonl" if filename.endswith(".jsonl")
                        else "application/octet-stream", filename=filename)
