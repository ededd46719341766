"""Dataset records: UPLOADING until a file is in place, then READY (and immutable)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ember.errors import AlreadyExists, FailedPrecondition, ResourceNotFound
from ember.store.db import Store
from ember.store.ids import check_id, utcnow
from ember.store.tables import Dataset

if TYPE_CHECKING:
    from ember.store.audit_record import AuditRecord

UPLOADING = "UPLOADING"
READY = "READY"
FORMATS = ("FORMAT_UNSPECIFIED", "CHAT", "COMPLETION", "RL")


class Datasets:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, account_id: str, dataset_id: str, *, display_name: str = "", example_count: int = 0,
               fmt: str = "FORMAT_UNSPECIFIED", created_by: str = "", source_job: str = "",
               user_uploaded: bool = True, audit: AuditRecord | None = None) -> Dataset:
        check_id(dataset_id, "datasetId")
        now = utcnow()
        try:
            with self.store.session(audit) as s:
                d = Dataset(account_id=account_id, dataset_id=dataset_id, display_name=display_name,
                            state=UPLOADING, example_count=example_count, estimated_tokens=0, bytes=0,
                            format=fmt, filenames=[], user_uploaded=user_uploaded, source_job=source_job,
                            created_by=created_by, created=now, updated=now)
                s.add(d)
        except IntegrityError:
            raise AlreadyExists(f"dataset {dataset_id!r} already exists") from None
        return d

    def get(self, account_id: str, dataset_id: str) -> Dataset:
        with self.store.session() as s:
            d = s.get(Dataset, (account_id, dataset_id))
        if d is None:
            raise ResourceNotFound(f"dataset {dataset_id[:63]!r} not found")
        return d

    def find(self, account_id: str, dataset_id: str) -> Dataset | None:
        with self.store.session() as s:
            return s.get(Dataset, (account_id, dataset_id))

    def list(self, account_id: str) -> list[Dataset]:
        with self.store.session() as s:
            return list(s.scalars(select(Dataset).where(Dataset.account_id == account_id)
                                  .order_by(Dataset.dataset_id)))

    def count_inputs(self, account_id: str) -> int:
        """The account's datasets other than jobs' outputs (what max_datasets_per_account caps)."""
        with self.store.session() as s:
            return s.scalar(select(func.count()).select_from(Dataset).where(
                Dataset.account_id == account_id, Dataset.source_job == "")) or 0

    def check_uploadable(self, account_id: str, dataset_id: str) -> Dataset:
        d = self.get(account_id, dataset_id)
        if d.state != UPLOADING:
            raise FailedPrecondition(f"dataset {dataset_id!r} is {d.state}: a dataset's file cannot be replaced "
                                     "once it is READY; create a new dataset")
        return d

    def mark_ready(self, account_id: str, dataset_id: str, filenames: list[str], size: int, examples: int,
                   tokens: int, *, audit: AuditRecord | None = None) -> Dataset:
        with self.store.session(audit) as s:
            d = s.get(Dataset, (account_id, dataset_id))
            if d is None:
                raise ResourceNotFound(f"dataset {dataset_id!r} was deleted during the upload")
            d.state, d.filenames, d.bytes = READY, filenames, size
            d.example_count, d.estimated_tokens, d.updated = examples, tokens, utcnow()
        return d

    def delete(self, account_id: str, dataset_id: str, *, audit: AuditRecord | None = None) -> None:
        with self.store.session(audit) as s:
            d = s.get(Dataset, (account_id, dataset_id))
            if d is None:
                raise ResourceNotFound(f"dataset {dataset_id[:63]!r} not found")
            s.delete(d)
