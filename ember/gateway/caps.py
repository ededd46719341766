"""Per-account caps on what a tenant may make the server keep: unfinished batch jobs, datasets, API keys.

Checked on the Gateway's and the OpenAI Batch API's creation paths before anything is written; one more
than the cap is a 429 `resource_exhausted` naming the cap and the flag that sets it. The count and the
insert are separate transactions, so concurrent creations may pass the cap by at most how many run at
once; the operator's CLI is never refused.
"""

from __future__ import annotations

from ember.errors import ResourceExhausted
from ember.gateway.services import BatchServices
from ember.store.api_keys import ApiKeys


def _check(held: int, cap: int, what: str, flag: str, remedy: str) -> None:
    if held >= cap:
        raise ResourceExhausted(f"this account already has {held} {what}, the most this server allows "
                                f"per account ({flag} {cap}); {remedy}")


def check_active_jobs(b: BatchServices, account_id: str) -> None:
    _check(b.jobs.count_active(account_id), b.config.max_active_jobs_per_account, "unfinished batch jobs",
           "--max-active-jobs-per-account", "wait for one to finish or cancel one")


def check_datasets(b: BatchServices, account_id: str) -> None:
    _check(b.datasets.count_inputs(account_id), b.config.max_datasets_per_account, "datasets and files",
           "--max-datasets-per-account", "delete one first")


def check_keys(keys: ApiKeys, account_id: str, cap: int) -> None:
    _check(keys.count_live(account_id), cap, "API keys", "--max-keys-per-account", "delete one first")
