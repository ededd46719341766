"""Operator commands on batch inference jobs: `ember jobs list | get | cancel | watch`.

They read the same store as `ember serve` (`--data-dir` or `--db`). `cancel` marks the job CANCELLING;
the server running on that store stops its rows and writes what is done within a tick (a stopped server
does it when it next starts).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ember.cli.admin import audit_failure
from ember.cli.flags import add_store_flags, store_config
from ember.errors import FailedPrecondition, ResourceNotFound
from ember.store import batch_jobs as st
from ember.store.audit_record import AuditRecord
from ember.store.batch_jobs import BatchJobs
from ember.store.db import Store, open_store
from ember.store.tables import BatchJob


def add_jobs_commands(sub: argparse._SubParsersAction) -> None:
    jobs = sub.add_parser("jobs", help="list, inspect, cancel and watch batch inference jobs")
    j_sub = jobs.add_subparsers(dest="action", required=True)
    ls = j_sub.add_parser("list", help="list jobs, oldest first")
    ls.add_argument("--account", default=None)
    ls.add_argument("--state", default=None, help="only jobs in this state, e.g. JOB_STATE_RUNNING or RUNNING")
    add_store_flags(ls)
    for name, text in (("get", "print one job as JSON"), ("cancel", "cancel an active job"),
                       ("watch", "a live progress bar until the job ends")):
        p = j_sub.add_parser(name, help=text)
        p.add_argument("job", help="a job id, or accounts/ACCOUNT/batchInferenceJobs/ID")
        p.add_argument("--account", default=None, help="the job's account (needed when ids repeat)")
        if name == "watch":
            p.add_argument("--interval", type=float, default=0.5, help="seconds between updates")
        add_store_flags(p)


def _find(jobs: BatchJobs, ref: str, account: str | None) -> BatchJob:
    parts = ref.split("/")
    if len(parts) == 4 and parts[0] == "accounts" and parts[2] == "batchInferenceJobs":
        account, ref = parts[1], parts[3]
    found = [j for j in jobs.list(account) if j.job_id == ref]
    if not found:
        raise ResourceNotFound(f"no batch inference job {ref!r}" + (f" in account {account!r}" if account else ""))
    if len(found) > 1:
        raise ResourceNotFound(f"job id {ref!r} exists in several accounts: pass --account")
    return found[0]


def _short(state: str) -> str:
    return state.removeprefix("JOB_STATE_")


def _row(j: BatchJob, jobs: BatchJobs) -> str:
    p = jobs.progress(j.account_id, j.job_id)
    return (f"{j.account_id:<16} {j.job_id:<24} {_short(j.state):<16} {p.processed:>7}/{j.total_rows:<7} "
            f"{p.failed:>6} {j.created.isoformat(timespec='seconds')}")


def run_jobs(a: argparse.Namespace) -> int:
    store = open_store(store_config(a))
    try:
        return _run(a, store)
    finally:
        store.close()


def _run(a: argparse.Namespace, store: Store) -> int:
    jobs = BatchJobs(store)
    if a.action == "list":
        want = a.state and ("JOB_STATE_" + _short(a.state.upper()))
        print(f"{'ACCOUNT':<16} {'JOB':<24} {'STATE':<16} {'DONE/TOTAL':>15} {'FAILED':>6} CREATED")
        for j in jobs.list(a.account):
            if not want or j.state == want:
                print(_row(j, jobs))
        return 0
    j = _find(jobs, a.job, a.account)
    if a.action == "get":
        from ember.gateway.batch_jobs import job_json

        print(json.dumps(job_json(j, jobs.progress(j.account_id, j.job_id)), indent=2))
        return 0
    if a.action == "cancel":
        rec = AuditRecord.operator(j.account_id, "jobs cancel", f"accounts/{j.account_id}/batchInferenceJobs/{j.job_id}",
                                   state=j.state)
        if not jobs.transition(j.account_id, j.job_id, st.CANCELLING, st.ACTIVE, "CANCELLED",
                               "cancelled by the operator", audit=rec):
            msg = f"job {j.job_id} is {_short(j.state)}; nothing to cancel"
            audit_failure(store, rec, FailedPrecondition(msg))
            print(f"ember: {msg}", file=sys.stderr)
            return 1
        print(f"{j.job_id}: cancelling (the server stops its rows and writes the results so far)")
        return 0
    return _watch(jobs, j, a.interval)


def _watch(jobs: BatchJobs, j: BatchJob, interval: float) -> int:
    from tqdm import tqdm

    bar = tqdm(total=max(j.total_rows, 1), unit="row", desc=j.job_id, dynamic_ncols=True)
    try:
        while True:
            j = jobs.get(j.account_id, j.job_id)
            p = jobs.progress(j.account_id, j.job_id)
            if j.total_rows and bar.total != j.total_rows:
                bar.total = j.total_rows
            bar.n = p.processed
            bar.set_postfix_str(f"{_short(j.state)} ok={p.succeeded} failed={p.failed}", refresh=False)
            bar.refresh()
            if j.state in st.FINISHED:
                break
            time.sleep(interval)
    finally:
        bar.close()
    if j.status_message:
        print(f"{_short(j.state)}: {j.status_message}")
    return 0 if j.state == st.COMPLETED else 1
