"""`ember audit`: print an account's audit log for operators, newest first (the store the server uses)."""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime, timedelta

from ember.cli.flags import add_store_flags, store_config

_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def add_audit_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="print an account's audit log (every change through the API or the CLI)")
    p.add_argument("--account", required=True, help="the account; _server: changes that belong to no account")
    p.add_argument("--since", default="30d",
                   help="how far back: 90m, 12h, 7d, or a time (2026-12-01, 2026-12-01T10:00:00Z); default 30d")
    p.add_argument("--until", default=None, help="the newest time to show (default: now)")
    p.add_argument("--email", default=None, help="only changes by this user's email ('operator': the CLI's)")
    p.add_argument("--method", default=None,
                   help='only this method, or those that begin with it: "DELETE", "cli ember keys", '
                        '"POST /v1/accounts/{account_id}/users"')
    p.add_argument("--limit", type=int, default=50, help="most entries to print (default %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object per line, as the API returns them")
    add_store_flags(p)


def parse_when(value: str, now: datetime, what: str) -> datetime:
    """A duration back from `now` (90m, 12h, 7d) or an RFC 3339 time / date; naive UTC out."""
    from ember.gateway.wire import parse_time

    m = _AGO.fullmatch(value.strip())
    if m is not None:
        return now - timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    try:
        t = parse_time(value, what)
    except Exception:  # noqa: BLE001 - InvalidRequest: said as the CLI says it
        raise ValueError(f"{what} must be a duration like 7d or a time like 2026-12-01T10:00:00Z, "
                         f"not {value!r}") from None
    assert t is not None
    return t


def run_audit(a: argparse.Namespace) -> int:
    from ember.gateway.audit_logs import entry_json
    from ember.store.audit_log import AuditLog, AuditQuery
    from ember.store.audit_record import SERVER_SCOPE
    from ember.store.db import open_store
    from ember.store.ids import check_id, utcnow

    if a.limit < 1:
        raise ValueError("--limit must be at least 1")
    now = utcnow()
    end = parse_when(a.until, now, "--until") if a.until else now
    start = parse_when(a.since, now, "--since")
    account = a.account if a.account == SERVER_SCOPE else check_id(a.account, "account")
    store = open_store(store_config(a))
    try:
        rows, total = AuditLog(store).list(AuditQuery(account, start, end, a.email or None, a.method or None),
                                           a.limit)
    finally:
        store.close()
    if a.json:
        for e in rows:
            print(json.dumps(entry_json(e)))
        return 0
    print(f"{'TIME (UTC)':<20} {'STATUS':>6}  {'WHO':<24} {'KEY':<9} {'FROM':<15} METHOD  RESOURCE  MESSAGE")
    for e in rows:
        who = e.principal or e.user_id or "-"
        print(f"{e.timestamp:%Y-%m-%d %H:%M:%S} {e.status_code:>6}  {who[:24]:<24} {(e.key_prefix or '-'):<9} "
              f"{(e.client_ip or '-')[:15]:<15} {e.method}  {e.resource}" + (f"  {e.message}" if e.message else ""))
    print(f"\n{len(rows)} of {total} entries from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC")
    return 0
