"""API keys: created with a random secret shown once, stored as its SHA-256 digest, looked up by digest.

A key carries 256 random bits, so a plain SHA-256 is enough to make a stolen database useless (a
password-style slow hash buys nothing against a secret that cannot be guessed) and keeps verification
to one indexed lookup. The digest found is compared again with `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ember.errors import ResourceNotFound
from ember.store.db import Store
from ember.store.ids import utcnow
from ember.store.tables import ApiKey, User

if TYPE_CHECKING:
    from ember.store.audit_record import AuditRecord

KEY_PREFIX = "fw_"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX) and 35 <= len(token) <= 128 and token.isascii()


@dataclass(frozen=True)
class CreatedKey:
    row: ApiKey
    key: str
    """The plaintext: returned to the creator once, never stored."""


@dataclass(frozen=True)
class KeyOwner:
    """Who a verified key belongs to, and until when it is good."""

    key_id: str
    account_id: str
    user_id: str
    role: str
    email: str
    expire_time: datetime | None
    user_state: str = "ACTIVE"
    """The user's state: a DISABLED user's keys authenticate nobody."""

    @property
    def disabled(self) -> bool:
        return self.user_state != "ACTIVE"


class ApiKeys:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create_in(self, s: Session, account_id: str, user_id: str, display_name: str,
                  expire_time: datetime | None, annotations: dict[str, str]) -> CreatedKey:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(key_id=secrets.token_hex(10), digest=digest(key), prefix=key[:8], account_id=account_id,
                     user_id=user_id, display_name=display_name or "default", annotations=dict(annotations),
                     created=utcnow(), expire_time=expire_time, deleted=None, last_used=None)
        s.add(row)
        s.flush()
        return CreatedKey(row, key)

    def create(self, account_id: str, user_id: str, display_name: str = "default",
               expire_time: datetime | None = None, annotations: dict[str, str] | None = None, *,
               audit: AuditRecord | None = None) -> CreatedKey:
        with self.store.session(audit) as s:
            if s.get(User, (account_id, user_id)) is None:
                raise ResourceNotFound(f"user {user_id[:63]!r} not found")
            created = self.create_in(s, account_id, user_id, display_name, expire_time, annotations or {})
            if audit is not None:  # the key's id exists only now; its entry names it
                audit.resource = f"accounts/{account_id}/users/{user_id}/apiKeys/{created.row.key_id}"
                audit.note(keyId=created.row.key_id, prefix=created.row.prefix)
        return created

    def list(self, account_id: str, user_id: str | None = None) -> list[ApiKey]:
        q = select(ApiKey).where(ApiKey.account_id == account_id, ApiKey.deleted.is_(None))
        if user_id is not None:
            q = q.where(ApiKey.user_id == user_id)
        with self.store.session() as s:
            return list(s.scalars(q.order_by(ApiKey.created, ApiKey.key_id)))

    def count_live(self, account_id: str) -> int:
        """The account's keys not deleted, expired ones included (what max_keys_per_account caps)."""
        with self.store.session() as s:
            return s.scalar(select(func.count()).select_from(ApiKey).where(
                ApiKey.account_id == account_id, ApiKey.deleted.is_(None))) or 0

    def get(self, account_id: str, key_id: str) -> ApiKey:
        with self.store.session() as s:
            row = s.get(ApiKey, key_id)
        if row is None or row.account_id != account_id or row.deleted is not None:
            raise ResourceNotFound(f"API key {key_id[:40]!r} not found")
        return row

    def delete(self, account_id: str, user_id: str | None, key_id: str, *,
               audit: AuditRecord | None = None) -> ApiKey:
        """Mark the key deleted (its row stays, so usage keeps naming it). `user_id` None: any user's."""
        with self.store.session(audit) as s:
            row = s.get(ApiKey, key_id)
            if (row is None or row.account_id != account_id or row.deleted is not None
                    or (user_id is not None and row.user_id != user_id)):
                raise ResourceNotFound(f"API key {str(key_id)[:40]!r} not found")
            row.deleted = utcnow()
            if audit is not None:  # the operator's revoke names no user: the entry names the key's own
                audit.resource = f"accounts/{account_id}/users/{row.user_id}/apiKeys/{key_id}"
        return row

    def verify(self, key: str) -> KeyOwner | None:
        """The owner of a live key, or None (unknown or deleted; expiry is the caller's check)."""
        if not looks_like_key(key):
            return None
        d = digest(key)
        with self.store.session() as s:
            hit = s.execute(
                select(ApiKey, User.role, User.email, User.state)
                .join(User, (User.account_id == ApiKey.account_id) & (User.user_id == ApiKey.user_id))
                .where(ApiKey.digest == d)
            ).first()
        if hit is None:
            return None
        row, role, email, user_state = hit
        if not hmac.compare_digest(row.digest, d) or row.deleted is not None:
            return None
        return KeyOwner(row.key_id, row.account_id, row.user_id, role, email, row.expire_time, user_state)

    def is_usable(self, account_id: str, key_id: str) -> bool:
        """Whether the key of `account_id` still authenticates: not deleted, not expired, user not disabled."""
        with self.store.session() as s:
            hit = s.execute(
                select(ApiKey, User.state)
                .join(User, (User.account_id == ApiKey.account_id) & (User.user_id == ApiKey.user_id))
                .where(ApiKey.key_id == key_id)
            ).first()
        if hit is None:
            return False
        row, user_state = hit
        return (row.account_id == account_id and row.deleted is None and user_state == "ACTIVE"
                and (row.expire_time is None or row.expire_time > utcnow()))

    def touch(self, last_used: dict[str, datetime]) -> None:
        """Record when keys were last used (batched: the hot path never writes per request)."""
        if not last_used:
            return
        with self.store.session() as s:
            for key_id, t in last_used.items():
                s.execute(update(ApiKey).where(ApiKey.key_id == key_id).values(last_used=t))
