"""Accounts (tenants) and their users."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ember.errors import AlreadyExists, InvalidRequest, ResourceNotFound
from ember.store.api_keys import ApiKeys, CreatedKey
from ember.store.db import Store
from ember.store.ids import check_id, utcnow
from ember.store.tables import Account, User

if TYPE_CHECKING:
    from ember.store.audit_record import AuditRecord

ROLES = ("admin", "user", "inference-user")
USER_STATES = ("ACTIVE", "DISABLED")
"""A DISABLED user's keys authenticate nobody (and their download URLs stop working) until it is ACTIVE again."""


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}, not {str(role)[:40]!r}", param="role")
    return role


@dataclass(frozen=True)
class NewAccount:
    account: Account
    admin: User
    key: CreatedKey


class Accounts:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, account_id: str, email: str, display_name: str = "", *,
               audit: AuditRecord | None = None) -> NewAccount:
        """The account, its first admin user (id "admin") and that user's first API key, in one transaction."""
        check_id(account_id, "account_id")
        if not email or "@" not in email or len(email) > 320:
            raise InvalidRequest("email must be an email address", param="email")
        now = utcnow()
        try:
            with self.store.session(audit) as s:
                acct = Account(account_id=account_id, email=email, display_name=display_name[:63],
                               created=now, updated=now)
                admin = User(account_id=account_id, user_id="admin", email=email, role="admin",
                             display_name="admin", service_account=False, created=now, updated=now)
                s.add(acct)
                s.flush()
                s.add(admin)
                s.flush()
                key = ApiKeys(self.store).create_in(s, account_id, "admin", "default", None, {})
        except IntegrityError:
            raise AlreadyExists(f"account {account_id!r} already exists") from None
        return NewAccount(acct, admin, key)

    def get(self, account_id: str) -> Account:
        with self.store.session() as s:
            a = s.get(Account, account_id)
        if a is None:
            raise ResourceNotFound(f"account {account_id!r} not found")
        return a

    def list(self) -> list[Account]:
        with self.store.session() as s:
            return list(s.scalars(select(Account).order_by(Account.account_id)))

    def count(self) -> int:
        with self.store.session() as s:
            return int(s.scalar(select(func.count()).select_from(Account)) or 0)


class Users:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, account_id: str, user_id: str, role: str, email: str = "", display_name: str = "",
               service_account: bool = False, *, audit: AuditRecord | None = None) -> User:
        check_id(user_id, "userId")
        check_role(role)
        now = utcnow()
        try:
            with self.store.session(audit) as s:
                if s.get(Account, account_id) is None:
                    raise ResourceNotFound(f"account {account_id!r} not found")
                u = User(account_id=account_id, user_id=user_id, email=email, role=role,
                         display_name=display_name, service_account=service_account, created=now, updated=now)
                s.add(u)
        except IntegrityError:
            raise AlreadyExists(f"user {user_id!r} already exists") from None
        return u

    def get(self, account_id: str, user_id: str) -> User:
        with self.store.session() as s:
            u = s.get(User, (account_id, user_id))
        if u is None:
            raise ResourceNotFound(f"user {user_id[:63]!r} not found")
        return u

    def list(self, account_id: str) -> list[User]:
        with self.store.session() as s:
            return list(s.scalars(select(User).where(User.account_id == account_id).order_by(User.user_id)))

    def update(self, account_id: str, user_id: str, *, audit: AuditRecord | None = None,
               **fields: object) -> User:
        with self.store.session(audit) as s:
            u = s.get(User, (account_id, user_id))
            if u is None:
                raise ResourceNotFound(f"user {user_id[:63]!r} not found")
            for k, v in fields.items():
                if k == "role":
                    check_role(str(v))
                if k == "state" and v not in USER_STATES:
                    raise InvalidRequest(f"state must be one of {', '.join(USER_STATES)}", param="state")
                setattr(u, k, v)
            u.updated = utcnow()
        return u

    def set_state(self, account_id: str, user_id: str, state: str, *,
                  audit: AuditRecord | None = None) -> User:
        """Disable or enable a user (`ember users disable|enable`; the Gateway's PATCH sets `state` through
        `update`). Callers drop the user's cached keys."""
        return self.update(account_id, user_id, audit=audit, state=state)
