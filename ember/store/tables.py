"""ORM tables of the platform store. Times are naive UTC datetimes (SQLite keeps no zone)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKeyConstraint, Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    account_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(64), default="")
    created: Mapped[datetime] = mapped_column(DateTime)
    updated: Mapped[datetime] = mapped_column(DateTime)


class User(Base):
    __tablename__ = "users"
    account_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), default="")
    role: Mapped[str] = mapped_column(String(32))
    display_name: Mapped[str] = mapped_column(String(64), default="")
    service_account: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(DateTime)
    updated: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (ForeignKeyConstraint(["account_id"], ["accounts.account_id"], ondelete="CASCADE"),)


class ApiKey(Base):
    """An API key: only its SHA-256 digest is kept; the plaintext is shown once, at creation."""

    __tablename__ = "api_keys"
    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(8))
    account_id: Mapped[str] = mapped_column(String(63))
    user_id: Mapped[str] = mapped_column(String(63))
    display_name: Mapped[str] = mapped_column(String(64), default="default")
    annotations: Mapped[dict] = mapped_column(JSON, default=dict)
    created: Mapped[datetime] = mapped_column(DateTime)
    expire_time: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    deleted: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_used: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    __table_args__ = (
        ForeignKeyConstraint(["account_id", "user_id"], ["users.account_id", "users.user_id"], ondelete="CASCADE"),
        Index("ix_api_keys_owner", "account_id", "user_id"),
    )


class Quota(Base):
    """A per-minute limit of one account: `value` is enforced, `max_value` is the operator's cap."""

    __tablename__ = "quotas"
    account_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    quota_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_value: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (ForeignKeyConstraint(["account_id"], ["accounts.account_id"], ondelete="CASCADE"),)


class UsageHour(Base):
    """Metered usage, summed per account x key x model x usage type x UTC hour (read back per day)."""

    __tablename__ = "usage_hours"
    account_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    usage_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    hour: Mapped[datetime] = mapped_column(DateTime, primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
