"""A live ember (tiny random model, real SQLite store) with account "acme", for dataset and batch-job tests."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace

import httpx
from fireworks import Fireworks

from ember.config import BatchConfig, StoreConfig
from ember.model.loader import LoadedModel
from ember.store.accounts import Accounts
from ember.store.db import Store, open_store
from tests.conftest import MODEL_ID, LiveServer, server_config
from tests.harness import wait_until

FINISHED = {"JOB_STATE_COMPLETED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


@dataclass
class BatchEnv:
    server: LiveServer
    data_dir: str
    key: str

    @property
    def url(self) -> str:
        return self.server.url

    def sdk(self) -> Fireworks:
        return Fireworks(api_key=self.key, base_url=self.url, account_id="acme", max_retries=0, timeout=120)

    def http(self, key: str | None = "") -> httpx.Client:
        key = self.key if key == "" else key
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {key}"} if key else {},
                            timeout=120)

    def store(self) -> Store:
        return open_store(StoreConfig(data_dir=self.data_dir))

    @property
    def app_batch(self):  # noqa: ANN201 - the app's BatchServices
        return self.server.app.state.batch


def make_env(tiny: LoadedModel, **batch: object) -> Iterator[BatchEnv]:
    data_dir = tempfile.mkdtemp(prefix="ember-batch-")
    store = open_store(StoreConfig(data_dir=data_dir))
    key = Accounts(store).create("acme", "ops@acme.test").key.key
    Accounts(store).create("globex", "ops@globex.test")
    store.close()
    cfg = replace(server_config(data_dir=data_dir), batch=BatchConfig(**{"poll_s": 0.1, **batch}))  # type: ignore[arg-type]
    with LiveServer(cfg, tiny) as s:
        yield BatchEnv(s, data_dir, key)


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(client: Fireworks, dataset_id: str, data: bytes, filename: str = "input.jsonl") -> None:
    client.datasets.create(dataset_id=dataset_id, dataset={"exampleCount": "1", "userUploaded": {}})
    client.datasets.upload(dataset_id, file=(filename, data, "application/jsonl"))


def wait_job(client: Fireworks, job_id: str, timeout: float = 240, until: set[str] | None = None):  # noqa: ANN201
    """The job once its state is one of `until` (default: finished)."""

    def reached():  # noqa: ANN202 - the job, or None while it is in another state
        job = client.batch_inference_jobs.get(job_id)
        return job if job.state in (until or FINISHED) else None

    return wait_until(reached, timeout, f"job {job_id} to reach {sorted(until or FINISHED)}", interval=0.1)


def download(client: Fireworks, dataset_id: str, lineage: bool = False) -> dict[str, bytes]:
    """Every file of the dataset, fetched from its signed URLs with no bearer key."""
    urls = client.datasets.get_download_endpoint(dataset_id, download_lineage=lineage).filename_to_signed_urls
    out = {}
    with httpx.Client(timeout=60) as h:
        for name, url in (urls or {}).items():
            r = h.get(url)
            assert r.status_code == 200, (name, r.status_code, r.text)
            out[name] = r.content
    return out


def lines_of(data: bytes) -> list[dict]:
    return [json.loads(x) for x in data.decode().splitlines() if x.strip()]


__all__ = ["MODEL_ID", "BatchEnv", "download", "jsonl", "lines_of", "make_env", "upload", "wait_job"]
