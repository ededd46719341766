"""Configuration: one frozen dataclass per area, validated at construction, built once by the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

QUANTIZATIONS = ("auto", "int4", "int8", "none")
DEVICES = ("cpu", "cuda", "auto")


def flag(name: str | None = None, *, choices: tuple[str, ...] | None = None,
         negate: bool = False) -> dict[str, Any]:
    """Field metadata for its `ember serve` / `ember complete` flag (ember/cli/flags.py), where the flag is
    not simply `--field-name`: another name, a fixed set of values, or (negate) a `--no-...` switch that
    turns a default-True field off. The help text is the field's docstring."""
    return {"flag": name, "choices": choices, "negate": negate}


INTERNAL: dict[str, Any] = {"internal": True}
"""Field metadata of a setting that has no flag: its default is what every server runs with."""


@dataclass(frozen=True)
class ModelConfig:
    model: str | None = None
    """A path to a .gguf file or a Hugging Face checkpoint directory, or a known short name; None = default."""
    device: str = field(default="cpu", metadata=flag(choices=DEVICES))
    """"cpu", "cuda" or "auto" (cuda when available)."""
    dtype: str = field(default="float32", metadata=INTERNAL)
    """Activation dtype of the dense path: float32 on CPU (bf16 matmuls have no fast CPU path here)."""
    quantization: str = field(default="auto", metadata=flag(choices=QUANTIZATIONS))
    """Weight-only quantization after loading: "auto" (GGUF block tensors run in place on the mapped file
    with ember's block kernels, model/gguf_linear.py; any other weight at its file's precision: Q4 -> int4,
    Q8/Q6 -> int8, floats stay fp32; CPU only), "int4", "int8" or "none" (fp32)."""
    max_model_len: int | None = None
    """Context window served; None = the checkpoint's own."""
    native_kernels: bool = field(default=True, metadata=flag("--no-native-kernels", negate=True))
    """Run decode attention and the fused per-layer steps with ember's C++ kernels (ember/kernels) where
    they build; torch ops otherwise."""

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be cpu, cuda or auto, not {self.device!r}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, not {self.quantization!r}")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise ValueError("max_model_len must be at least 16")


@dataclass(frozen=True)
class SpeculativeConfig:
    ngram_lookup: bool = field(default=False, metadata=flag("--speculative-ngram"))
    """Draft from the request's own prompt and output (prompt lookup) when it brings no prediction."""
    num_draft_tokens: int = 3
    """Draft tokens verified per step for one sequence; 2k+1 after a draft was accepted whole (a prediction
    that held is likely to hold on). The CPU int4 matmul works in blocks of 4 rows, so the default's
    verify row (the last token plus 3 drafts) fills one block and the longer one (7 drafts) two."""

    def __post_init__(self) -> None:
        if not 1 <= self.num_draft_tokens <= 64:
            raise ValueError("num_draft_tokens must be in 1..64")


KV_CACHE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    """Tokens per KV block; prefix sharing works at this granularity."""
    kv_cache_mb: int = 512
    """Memory budget for K and V of all layers; the block count is derived from it. With float16 the
    default model holds 23,000 tokens in it (a float32 cache needs twice the memory for the same)."""
    kv_cache_dtype: str = field(default="float16", metadata=flag(choices=KV_CACHE_DTYPES))
    """How K and V are stored: "float16" (half the memory and half the bytes each attention step reads;
    attention still computes in float32) or "float32" (exact storage of what the layer computed)."""
    enable_prefix_caching: bool = field(default=True, metadata=flag("--no-prefix-caching", negate=True))
    """Reuse the KV blocks of a prompt prefix already computed for another request."""

    def __post_init__(self) -> None:
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a power of two")
        if self.kv_cache_mb < 1:
            raise ValueError("kv_cache_mb must be positive")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    """Most sequences in one running batch."""
    max_num_batched_tokens: int = 512
    """Per-step token budget: decodes take one each, prefills are chunked to fit what is left."""
    background_tokens_when_busy: int = field(default=2, metadata=INTERNAL)
    """Most tokens batch-job rows get in one step while interactive work is present (see busy_linger_steps).
    A step's time grows with its rows , so this bounds how
    much slower each interactive step gets; at least 1, so batch rows always advance."""
    background_seqs_when_busy: int = field(default=2, metadata=INTERNAL)
    """Most batch-job rows in one step while interactive work is present; the other running rows keep their
    KV blocks and seats (until an interactive request needs them) and wait."""
    background_step_tokens: int = field(default=256, metadata=INTERNAL)
    """Most tokens batch-job rows get in one step when no interactive work is present: an interactive
    request arriving mid-step waits for the step in flight, so this bounds what a batch job adds to its
    time to first token (a 512-token prefill step is ~0.6 s on 2 cores; decode rows are unaffected)."""
    long_prefill_tokens: int = 128
    """A prompt with more tokens to compute than one step's budget is long. While anything else is in the step
    (a decode, a shorter prompt), long prompts together take at most this many tokens of it, oldest first:
    a prompt near the context window (tens of seconds of prefill on a CPU) then shares every step with
    decodes and short prompts instead of holding whole steps, and a short prompt that arrives behind it
    starts in the next step. Alone, long prompts take the whole budget. 128: on a 2-core Zen 3 a 7,000-token
    prompt then costs decoding streams beside it 1.5 s a token instead of 5.6 s and its own prefill 3% more
    (bench/long_prompt_sharing.py)."""
    max_prefill_backlog_s: float = field(default=60.0, metadata=flag("--max-prefill-backlog"))
    """A long prompt is refused (503, retry-after) when other long prompts are ahead of it and the measured
    prefill rate says they and it would take longer than this to compute: long prompts are prefilled
    oldest first, so it would wait for all of them. A long prompt with none ahead is always taken."""
    busy_linger_steps: int = field(default=8, metadata=INTERNAL)
    """Steps the interactive-work caps outlast the last interactive sequence: a client sending its next
    request a few milliseconds after the last one ended then finds a small step, not a full batch step."""

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be at least 1")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs so every decode fits a step")
        if self.background_tokens_when_busy < 1 or self.background_seqs_when_busy < 1:
            raise ValueError("background_tokens_when_busy and background_seqs_when_busy must be at least 1 "
                             "(batch rows would starve)")
        if self.background_step_tokens < 1:
            raise ValueError("background_step_tokens must be at least 1 (batch rows would never advance)")
        if self.long_prefill_tokens < 1:
            raise ValueError("long_prefill_tokens must be at least 1")
        if not self.max_prefill_backlog_s > 0:
            raise ValueError("max_prefill_backlog_s must be positive")
        if self.busy_linger_steps < 0:
            raise ValueError("busy_linger_steps must not be negative")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    """The address to listen on; anything but loopback needs API keys (or --allow-unauthenticated)."""
    port: int = 8000
    """The TCP port to listen on."""
    api_keys: tuple[str, ...] = field(default=(), metadata=flag("--api-key"))
    """When non-empty, requests must carry one of these as a Bearer token (account 'local'; repeatable);
    keys from the store work too."""
    stall_timeout_s: float = field(default=30.0, metadata=flag("--health-stall-timeout"))
    """/health answers 503 once the engine loop has not stepped for this long while work is pending. A
    step is milliseconds to a second or so (a 512-token prefill chunk on 2 CPU cores); 30 s is far past
    any honest step and well inside what an orchestrator's liveness probe tolerates."""
    drain_timeout_s: float = field(default=30.0, metadata=flag("--drain-timeout"))
    """On SIGTERM/SIGINT: how long requests in flight may run on; those left then end with a 503-shaped
    error (an error event in a stream) and the process exits 0."""
    max_request_timeout_s: float | None = field(default=None, metadata=flag("--max-request-timeout"))
    """Upper bound on a request's total time (queueing included); a client's `x-request-timeout` header may
    ask for less. None: unbounded unless the client asks."""
    keep_alive_timeout_s: float = field(default=75.0, metadata=flag("--keep-alive-timeout"))
    """How long an idle keep-alive connection stays open. It must outlast the idle expiry of the clients'
    pools (httpx and Node: 5 s, aiohttp: 15 s, a cloud load balancer: 60 s): a server that closes first
    races the client's next request on that connection, which then fails with a reset and no status line.
    uvicorn's own 5 s equals httpx's, which is how a soak lost 3 requests in 2,789. 75 s as nginx."""
    max_header_kb: int = 64
    """A request's line and headers together; past it the connection gets 431 and is closed before more is
    parsed (a 120 MB header block otherwise slowed every other client for seconds)."""
    max_body_mb: float = 8.0
    """A request body on any path but the uploads (`--max-upload-mb` bounds those); past it 413. 8 MiB
    holds a full 128k-token prompt as token ids, or a full context of text, with room to spare."""
    fd: int | None = None
    """Serve on this listening socket, inherited from the parent process as a file descriptor, instead of
    binding --host/--port; host and port are then the socket's own. The parent owns the port before ember
    starts (a supervisor's socket activation, a test harness), so nothing can take it in between."""
    public_url: str | None = None
    """The base URL clients reach this server at (`http(s)://host[:port]`), for the download URLs it hands
    out and, while it serves open, as one more Host it answers to. None: the address of the socket a
    request came in on (never the request's own Host header)."""

    def allowed_hosts(self) -> tuple[str, ...]:
        """Hosts an open server answers to besides localhost and IP literals (ember.http.host_check)."""
        public = urlsplit(self.public_url).hostname if self.public_url else None
        return tuple(h for h in (self.host, public) if h)

    def __post_init__(self) -> None:
        if self.public_url is not None:
            u = urlsplit(self.public_url)
            if u.scheme not in ("http", "https") or not u.hostname or u.query or u.fragment:
                raise ValueError("public_url must be an http:// or https:// URL like https://ember.example.com")
        if self.stall_timeout_s <= 0:
            raise ValueError("stall_timeout_s must be positive")
        if self.drain_timeout_s < 0:
            raise ValueError("drain_timeout_s must not be negative")
        if self.max_request_timeout_s is not None and self.max_request_timeout_s <= 0:
            raise ValueError("max_request_timeout_s must be positive")
        if self.keep_alive_timeout_s <= 0:
            raise ValueError("keep_alive_timeout_s must be positive")
        if self.max_header_kb < 1:
            raise ValueError("max_header_kb must be at least 1")
        if self.max_body_mb <= 0:
            raise ValueError("max_body_mb must be positive")
        if self.fd is not None and self.fd < 0:
            raise ValueError("fd must be a file descriptor (0 or more)")


AUTH_MODES = ("auto", "keys", "none")


@dataclass(frozen=True)
class StoreConfig:
    data_dir: str | None = None
    """Where the SQLite file (ember.db) and the dataset files live; None = $XDG_DATA_HOME/ember or
    ~/.local/share/ember."""
    url: str | None = field(default=None, metadata=flag("--db"))
    """An SQLAlchemy URL (postgresql+psycopg://user:pass@host/db) that replaces the SQLite file."""

    def resolved_data_dir(self) -> str:
        if self.data_dir:
            return self.data_dir
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        return os.path.join(base, "ember")

    def database_url(self) -> str:
        if self.url:
            return self.url
        return "sqlite:///" + os.path.join(os.path.abspath(self.resolved_data_dir()), "ember.db")

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("sqlite", "postgresql")):
            raise ValueError("--db must be a sqlite:/// or postgresql+psycopg:// URL")


@dataclass(frozen=True)
class PlatformConfig:
    auth: str = field(default="auto", metadata=flag(choices=AUTH_MODES))
    """"auto": keys required once the store holds an account, open (completions only) before that;
    "keys": always required; "none": never required."""
    allow_unauthenticated: bool = False
    """Serve open on a non-loopback address (refused otherwise)."""
    max_queued_requests: int = 1024
    """Sequences waiting for the engine past which new requests get 503 (service_tier "priority" gets
    twice as much room)."""
    usage_flush_s: float = field(default=1.0, metadata=INTERNAL)
    """How often metered usage is written to the store (also on read and at shutdown)."""
    key_cache_s: float = field(default=5.0, metadata=INTERNAL)
    """How long a verified key is trusted before the store is asked again (bounds how late another
    process sees a deleted key)."""
    max_keys_per_account: int = 1000
    """Live API keys an account may hold; the Gateway refuses one more (429 resource_exhausted). Per
    account, not per user: a user key mints its own keys and an admin mints users, so only an account-wide
    bound caps what one tenant can make the server keep and check. 1,000 covers hundreds of people and
    services with keys in rotation; the operator's `ember accounts create-key` is not refused."""

    def __post_init__(self) -> None:
        if self.auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, not {self.auth!r}")
        if self.max_queued_requests < 1:
            raise ValueError("max_queued_requests must be at least 1")
        if self.max_keys_per_account < 1:
            raise ValueError("max_keys_per_account must be at least 1")
        if not 0.05 <= self.usage_flush_s <= 60:
            raise ValueError("usage_flush_s must be in 0.05..60")


@dataclass(frozen=True)
class BatchConfig:
    max_upload_mb: int = 150
    """Largest dataset file `:upload` takes (413 past it); the file streams to disk, never into memory."""
    download_url_ttl_s: int = field(default=600, metadata=INTERNAL)
    """How long a signed dataset download URL stays valid."""
    max_inflight_rows: int = field(default=64, metadata=INTERNAL)
    """Batch rows handed to the engine at once (all jobs together); the engine runs them at low priority."""
    job_ttl_h: float = field(default=24.0, metadata=INTERNAL)
    """A job not finished this long after creation ends EXPIRED (its results so far are kept)."""
    poll_s: float = field(default=0.5, metadata=INTERNAL)
    """How often the job runner looks for new, cancelled or expired jobs."""
    max_active_jobs_per_account: int = 100
    """Batch jobs (Gateway and OpenAI batches together) an account may have not yet finished; one more is
    refused (429 resource_exhausted). The runner deals rows one per job per round, so a tenant's many jobs
    cost the others nothing but the store's rows and the runner's per-tick work, which this bounds; 100
    is far past what one server drains at once."""
    max_datasets_per_account: int = 1000
    """Datasets an account may hold: Gateway datasets and OpenAI files, each up to max_upload_mb on disk.
    A job's output dataset is not counted, so an account at its cap still gets its jobs' results."""

    def __post_init__(self) -> None:
        if self.max_upload_mb < 1:
            raise ValueError("max_upload_mb must be at least 1")
        if self.download_url_ttl_s < 1:
            raise ValueError("download_url_ttl_s must be at least 1")
        if self.max_inflight_rows < 1:
            raise ValueError("max_inflight_rows must be at least 1")
        if self.job_ttl_h <= 0:
            raise ValueError("job_ttl_h must be positive")
        if self.max_active_jobs_per_account < 1 or self.max_datasets_per_account < 1:
            raise ValueError("max_active_jobs_per_account and max_datasets_per_account must be at least 1")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    platform: PlatformConfig = field(default_factory=PlatformConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)


@dataclass(frozen=True)
class ClusterConfig:
    """`ember serve --replicas N` on Ray Serve (ember/cluster/): how many engines, where, and how each is fed."""

    replicas: int = 1
    """Engine replicas on Ray Serve behind one endpoint (needs ember[cluster]); 1 without an address: no Ray."""
    address: str | None = None
    """An existing Ray cluster's HOST:PORT; None starts a local Ray in this process."""
    threads_per_replica: int = 1
    """torch threads (and Ray logical CPUs) per replica."""
    pin_threads: bool = field(default=True, metadata=flag("--no-pin-threads", negate=True))
    """Pin each replica's threads to its own cores (by its rank on the node) so replicas do not fight."""
    max_ongoing_requests: int | None = None
    """Requests a replica takes before its owner counts as saturated and keyed requests spill to the next
    replica on the ring; None: the scheduler's max_num_seqs."""
    max_queued_requests: int = field(default=1024, metadata=INTERNAL)
    """Requests the proxy holds waiting for a replica; past it clients get 503."""
    fallback_replicas: int = 1
    """Ring successors a keyed request may spill to when its owner is saturated."""
    health_check_period_s: float = field(default=5.0, metadata=INTERNAL)
    health_check_timeout_s: float = field(default=30.0, metadata=INTERNAL)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError("--replicas must be at least 1")
        if self.threads_per_replica < 1:
            raise ValueError("--threads-per-replica must be at least 1")

    @property
    def uses_ray(self) -> bool:
        return self.replicas > 1 or self.address is not None
