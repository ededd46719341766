"""What the dataset and batch-job routes share, built once per app (see app.py) and kept on app.state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from ember.config import BatchConfig
from ember.gateway.signing import UrlSigner
from ember.store.api_keys import ApiKeys
from ember.store.batch_jobs import BatchJobs
from ember.store.dataset_files import DatasetFiles
from ember.store.datasets import Datasets
from ember.store.db import Store
from ember.store.secrets import DOWNLOAD_URL_SECRET, current_secret


@dataclass
class BatchServices:
    store: Store
    config: BatchConfig
    datasets: Datasets
    jobs: BatchJobs
    files: DatasetFiles
    signer: UrlSigner
    public_url: str | None = None
    """The base of the download URLs handed out (`--public-url`); None: the address the server was reached
    at (its own socket's, never the request's Host header)."""

    @classmethod
    def build(cls, store: Store, data_dir: str, config: BatchConfig,
              public_url: str | None = None) -> BatchServices:
        files = DatasetFiles(data_dir)
        files.secure()
        keys = ApiKeys(store)
        signer = UrlSigner(lambda: current_secret(store, DOWNLOAD_URL_SECRET), config.download_url_ttl_s,
                           keys.is_usable)
        return cls(store, config, Datasets(store), BatchJobs(store), files, signer, public_url)


def get_batch(request: Request) -> BatchServices:
    return request.app.state.batch


BatchDep = Annotated[BatchServices, Depends(get_batch)]
