"""ORM tables of the platform store. Times are naive UTC datetimes (SQLite keeps no zone)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKeyConstraint, Index, Integer, String, Text
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
    state: Mapped[str] = mapped_column(String(32), default="ACTIVE", server_default="ACTIVE")
    """ACTIVE, or DISABLED: a disabled user's keys authenticate nobody until the user is enabled again."""
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


class Dataset(Base):
    """A dataset's record; its files live under the data directory (datasets/{account}/{dataset}/)."""

    __tablename__ = "datasets"
    account_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(32))
    example_count: Mapped[int] = mapped_column(BigInteger, default=0)
    estimated_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    format: Mapped[str] = mapped_column(String(32), default="FORMAT_UNSPECIFIED")
    filenames: Mapped[list] = mapped_column(JSON, default=list)
    """The files of the dataset, in its directory (names ember chose or sanitized, never client paths)."""
    user_uploaded: Mapped[bool] = mapped_column(Boolean, default=True)
    source_job: Mapped[str] = mapped_column(String(160), default="")
    created_by: Mapped[str] = mapped_column(String(320), default="")
    created: Mapped[datetime] = mapped_column(DateTime)
    updated: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (ForeignKeyConstraint(["account_id"], ["accounts.account_id"], ondelete="CASCADE"),)


class BatchJob(Base):
    """A batch inference job; its progress is counted from its committed BatchResult rows."""

    __tablename__ = "batch_jobs"
    account_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(64), default="")
    created_by: Mapped[str] = mapped_column(String(320), default="")
    key_id: Mapped[str] = mapped_column(String(40), default="")
    """The API key that created the job: its rows are metered to it."""
    state: Mapped[str] = mapped_column(String(40))
    status_code: Mapped[str] = mapped_column(String(32), default="OK")
    status_message: Mapped[str] = mapped_column(String(2000), default="")
    model: Mapped[str] = mapped_column(String(255))
    input_dataset_id: Mapped[str] = mapped_column(String(63))
    output_dataset_id: Mapped[str] = mapped_column(String(63))
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    """inferenceParameters as sent (camelCase keys)."""
    precision: Mapped[str] = mapped_column(String(32), default="PRECISION_UNSPECIFIED")
    continued_from: Mapped[str] = mapped_column(String(63), default="")
    total_rows: Mapped[int] = mapped_column(BigInteger, default=0)
    created: Mapped[datetime] = mapped_column(DateTime)
    updated: Mapped[datetime] = mapped_column(DateTime)
    expire_time: Mapped[datetime] = mapped_column(DateTime)
    run_start: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    api: Mapped[str] = mapped_column(String(16), default="fireworks")
    """"fireworks" (Gateway batchInferenceJobs) or "openai" (/v1/batches): the row and output formats."""
    endpoint: Mapped[str] = mapped_column(String(64), default="")
    """An OpenAI batch's endpoint ("/v1/completions" or "/v1/chat/completions"): every row's url must equal
    it. Empty for a Gateway job, whose rows each say by their body which endpoint they are."""
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    """OpenAI batch metadata, kept as given."""
    owner: Mapped[str] = mapped_column(String(40), default="")
    """The job runner (one per server process) driving the job while its lease lasts."""
    lease_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    __table_args__ = (ForeignKeyConstraint(["account_id"], ["accounts.account_id"], ondelete="CASCADE"),
                      Index("ix_batch_jobs_state", "state", "created"))


class BatchResult(Base):
    """One row's outcome, committed before it counts: the primary key makes each custom_id land once."""

    __tablename__ = "batch_results"
    account_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    custom_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    line: Mapped[str] = mapped_column(Text)
    """The output line as written to BIJOutputSet.jsonl (ok) or error-data (not ok)."""
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    created: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (ForeignKeyConstraint(["account_id", "job_id"], ["batch_jobs.account_id", "batch_jobs.job_id"],
                                           ondelete="CASCADE"),)


class ServerSecret(Base):
    """Secrets every process on this database shares (the key that signs download URLs)."""

    __tablename__ = "server_secrets"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class AuditLogEntry(Base):
    """One change made through the Gateway or the operator CLI, written in the change's own transaction.

    Never holds a secret: keys appear as their id and 8-character prefix, signed URLs not at all. No
    foreign key to accounts: the record of an account's changes outlives the account.
    """

    __tablename__ = "audit_logs"
    entry_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(63))
    timestamp: Mapped[datetime] = mapped_column(DateTime)
    method: Mapped[str] = mapped_column(String(128))
    """What was asked, as "HTTP-METHOD /path template" or "cli ember ..." (e.g. "POST apiKeys")."""
    resource: Mapped[str] = mapped_column(String(512))
    """The resource acted on, e.g. accounts/acme/apiKeys/key-id."""
    principal: Mapped[str] = mapped_column(String(320))
    """The acting user's email (or "operator" for the CLI)."""
    user_id: Mapped[str] = mapped_column(String(63))
    key_id: Mapped[str] = mapped_column(String(40))
    key_prefix: Mapped[str] = mapped_column(String(8))
    status_code: Mapped[int] = mapped_column(Integer)
    """The HTTP status the change answered (failures are logged too)."""
    message: Mapped[str] = mapped_column(String(2000))
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    user_agent: Mapped[str] = mapped_column(String(512))
    client_ip: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    """"api" or "cli"."""
    is_admin_action: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (Index("ix_audit_logs_account_time", "account_id", "timestamp"),)
