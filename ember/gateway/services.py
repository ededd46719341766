"""What the dataset and batch-job routes share, built once per app (see app.py) and kept on app.state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from ember.config import BatchConfig
from ember.gateway.signing import UrlSigner
from ember.store.batch_jobs import BatchJobs
from ember.store.dataset_files import DatasetFiles
from ember.store.datasets import Datasets
from ember.store.db import Store
from ember.store.secrets import shared_secret


@dataclass
class BatchServices:
    store: Store
    config: BatchConfig
    datasets: Datasets
    jobs: BatchJobs
    files: DatasetFiles
    signer: UrlSigner

    @classmethod
    def build(cls, store: Store, data_dir: str, config: BatchConfig) -> BatchServices:
        return cls(store, config, Datasets(store), BatchJobs(store), DatasetFiles(data_dir),
                   UrlSigner(shared_secret(store, "dataset-download-url")))


def get_batch(request: Request) -> BatchServices:
    return request.app.state.batch


BatchDep = Annotated[BatchServices, Depends(get_batch)]
