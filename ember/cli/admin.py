"""Operator commands on the platform store: `ember accounts | users | keys | usage | secrets`.

They open the same database as `ember serve` (`--data-dir` or `--db`), whether or not a server runs on
it; a running server sees a new account at once, a revoked key within its key cache time (5 s). Every
change they make (or fail to make) writes an audit entry of the account (source "cli").
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from ember.cli.flags import add_store_flags, store_config
from ember.errors import EmberError
from ember.store.audit_log import AuditLog
from ember.store.audit_record import SERVER_SCOPE, AuditRecord

if TYPE_CHECKING:
    from ember.store.db import Store


def add_admin_commands(sub: argparse._SubParsersAction) -> None:
    acc = sub.add_parser("accounts", help="create and list accounts; cap their quotas")
    acc_sub = acc.add_subparsers(dest="action", required=True)
    c = acc_sub.add_parser("create", help="create an account, its admin user and a first API key (printed once)")
    c.add_argument("account_id")
    c.add_argument("--email", required=True)
    c.add_argument("--display-name", default="")
    add_store_flags(c)
    ls = acc_sub.add_parser("list", help="list accounts")
    add_store_flags(ls)
    q = acc_sub.add_parser("set-quota", help="cap a per-minute quota of an account (maxValue)")
    q.add_argument("account_id")
    q.add_argument("quota_id", help="requests-per-minute | prompt-tokens-per-minute | "
                                    "cache-adjusted-prompt-tokens-per-minute | generated-tokens-per-minute")
    q.add_argument("--max-value", type=int, default=None, help="the cap; omit to lift it")
    q.add_argument("--value", type=int, default=None, help="also set the enforced value (at most the cap)")
    add_store_flags(q)

    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    k_sub = keys.add_subparsers(dest="action", required=True)
    kc = k_sub.add_parser("create", help="create a key (printed once, on the last line)")
    kc.add_argument("--account", required=True)
    kc.add_argument("--user", default="admin")
    kc.add_argument("--display-name", default="default")
    kc.add_argument("--expires-in-days", type=float, default=None)
    add_store_flags(kc)
    kl = k_sub.add_parser("list", help="list an account's keys (never their secrets)")
    kl.add_argument("--account", required=True)
    kl.add_argument("--user", default=None)
    add_store_flags(kl)
    kr = k_sub.add_parser("revoke", help="delete a key by its id")
    kr.add_argument("key_id")
    kr.add_argument("--account", required=True)
    add_store_flags(kr)

    users = sub.add_parser("users", help="disable or enable a user (a disabled user's keys stop working)")
    us_sub = users.add_subparsers(dest="action", required=True)
    for action, what in (("disable", "its keys and their download URLs stop working"),
                         ("enable", "its keys work again")):
        ud = us_sub.add_parser(action, help=f"{action} a user: {what}")
        ud.add_argument("user_id")
        ud.add_argument("--account", required=True)
        add_store_flags(ud)

    sec = sub.add_parser("secrets", help="rotate the server's secrets")
    sec_sub = sec.add_subparsers(dest="action", required=True)
    rs = sec_sub.add_parser("rotate-signing-key",
                            help="replace the key that signs dataset download URLs: every URL handed out "
                                 "before stops working (within 5 s on running servers)")
    add_store_flags(rs)

    u = sub.add_parser("usage", help="usage per API key and model over a date range")
    u.add_argument("--account", required=True)
    u.add_argument("--start", default=None, help="first day, YYYY-MM-DD (default: 7 days ago)")
    u.add_argument("--end", default=None, help="last day, YYYY-MM-DD, inclusive (default: today)")
    u.add_argument("--timezone", default="UTC")
    add_store_flags(u)


def _day(s: str, what: str) -> datetime:
    try:
        return datetime.strptime(s, "%Y-%m-%d")
    except ValueError:
        raise ValueError(f"{what} must be a date like 2026-12-01, not {s!r}") from None


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def operator_change(a: argparse.Namespace) -> AuditRecord | None:
    """The audit record of a changing command, None for one that only reads."""
    if a.cmd == "accounts" and a.action == "create":
        return AuditRecord.operator(a.account_id, "accounts create", f"accounts/{a.account_id}", email=a.email,
                                    displayName=a.display_name)
    if a.cmd == "accounts" and a.action == "set-quota":
        return AuditRecord.operator(a.account_id, "accounts set-quota", f"accounts/{a.account_id}/quotas/{a.quota_id}",
                                    maxValue=a.max_value, value=a.value)
    if a.cmd == "keys" and a.action == "create":
        return AuditRecord.operator(a.account, "keys create", f"accounts/{a.account}/users/{a.user}/apiKeys",
                                    displayName=a.display_name, expiresInDays=a.expires_in_days)
    if a.cmd == "keys" and a.action == "revoke":
        return AuditRecord.operator(a.account, "keys revoke", f"accounts/{a.account}/apiKeys/{a.key_id}")
    if a.cmd == "users":
        return AuditRecord.operator(a.account, f"users {a.action}", f"accounts/{a.account}/users/{a.user_id}")
    if a.cmd == "secrets" and a.action == "rotate-signing-key":
        return AuditRecord.operator(SERVER_SCOPE, "secrets rotate-signing-key", "secrets/download-url-signing-key")
    return None


def audit_failure(store: Store, rec: AuditRecord | None, e: Exception) -> None:
    """Write the entry of a command that failed (its change never committed): the status the API would
    have answered for the same error."""
    if rec is None or rec.committed:
        return
    from ember.http.errors import status_of
    from ember.store.ids import check_id

    try:
        check_id(rec.account_id, "account")
    except EmberError:  # no account can have this id: there is no log to write it to
        return

    status = status_of(e)[0] if isinstance(e, EmberError) else 400
    AuditLog(store).write(rec, status, e.message if isinstance(e, EmberError) else str(e))


def run_admin(a: argparse.Namespace) -> int:
    from ember.store.accounts import Accounts, Users
    from ember.store.api_keys import ApiKeys
    from ember.store.db import open_store
    from ember.store.ids import check_id, utcnow
    from ember.store.quotas import Quotas
    from ember.store.secrets import DOWNLOAD_URL_SECRET, rotate_secret
    from ember.store.usage import usage_totals

    store = open_store(store_config(a))
    rec = operator_change(a)
    try:
        if a.cmd == "accounts" and a.action == "create":
            new = Accounts(store).create(a.account_id, a.email, a.display_name, audit=rec)
            print(f"created account {new.account.account_id} with admin user 'admin' and API key "
                  f"{new.key.row.key_id}; the key is shown this once:", file=sys.stderr)
            print(new.key.key)
        elif a.cmd == "accounts" and a.action == "list":
            rows = [[x.account_id, x.email, x.created.strftime("%Y-%m-%d %H:%M")] for x in Accounts(store).list()]
            print(_table(rows, ["ACCOUNT", "EMAIL", "CREATED (UTC)"]))
        elif a.cmd == "accounts" and a.action == "set-quota":
            q = Quotas(store).set_cap(check_id(a.account_id, "account_id"), a.quota_id, a.max_value, a.value,
                                      audit=rec)
            print(f"{a.account_id} {q.quota_id}: maxValue {q.max_value if q.max_value is not None else 'none'}, "
                  f"enforced {q.effective if q.effective is not None else 'unlimited'} per minute")
        elif a.cmd == "keys" and a.action == "create":
            expire = utcnow() + timedelta(days=a.expires_in_days) if a.expires_in_days else None
            new_key = ApiKeys(store).create(check_id(a.account, "account"), check_id(a.user, "user"),
                                            a.display_name, expire, audit=rec)
            print(f"created API key {new_key.row.key_id} for {a.account}/{a.user}; shown this once:",
                  file=sys.stderr)
            print(new_key.key)
        elif a.cmd == "keys" and a.action == "list":
            keys = ApiKeys(store).list(check_id(a.account, "account"), a.user)
            rows = [[k.key_id, k.user_id, k.display_name, k.prefix + "…", k.created.strftime("%Y-%m-%d %H:%M"),
                     k.expire_time.strftime("%Y-%m-%d %H:%M") if k.expire_time else "never",
                     k.last_used.strftime("%Y-%m-%d %H:%M") if k.last_used else "-"] for k in keys]
            print(_table(rows, ["KEY ID", "USER", "NAME", "PREFIX", "CREATED", "EXPIRES", "LAST USED"]))
        elif a.cmd == "keys" and a.action == "revoke":
            ApiKeys(store).delete(check_id(a.account, "account"), None, a.key_id, audit=rec)
            print(f"revoked {a.key_id}", file=sys.stderr)
        elif a.cmd == "users":
            state = "DISABLED" if a.action == "disable" else "ACTIVE"
            Users(store).set_state(check_id(a.account, "account"), check_id(a.user_id, "user_id"), state,
                                   audit=rec)
            print(f"{a.account}/{a.user_id}: {state}", file=sys.stderr)
        elif a.cmd == "secrets" and a.action == "rotate-signing-key":
            rotate_secret(store, DOWNLOAD_URL_SECRET, audit=rec)
            print("rotated the download-URL signing key; URLs signed before no longer work", file=sys.stderr)
        elif a.cmd == "usage":
            tz = ZoneInfo(a.timezone)
            today = datetime.now(tz).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
            end = _day(a.end, "--end") if a.end else today
            start = _day(a.start, "--start") if a.start else end - timedelta(days=7)
            if end < start:
                raise ValueError("--end is before --start")
            totals = usage_totals(store, check_id(a.account, "account"), start.replace(tzinfo=tz),
                                  (end + timedelta(days=1)).replace(tzinfo=tz))
            rows = [[t.key_id, t.model, t.usage_type, str(t.requests), str(t.prompt_tokens),
                     str(t.cached_prompt_tokens), str(t.completion_tokens)] for t in totals]
            print(_table(rows, ["API KEY", "MODEL", "TYPE", "REQUESTS", "PROMPT", "CACHED", "COMPLETION"]))
            print(f"\n{start:%Y-%m-%d} .. {end:%Y-%m-%d} ({a.timezone}): {sum(t.requests for t in totals)} "
                  f"requests, {sum(t.prompt_tokens for t in totals)} prompt tokens, "
                  f"{sum(t.completion_tokens for t in totals)} completion tokens")
        return 0
    except (EmberError, ValueError) as e:
        audit_failure(store, rec, e)
        raise
    finally:
        store.close()

