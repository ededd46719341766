"""The platform around inference, composed once per app: store, auth, rate limits, metering."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ember.config import PlatformConfig
from ember.platform.auth import Authenticator
from ember.platform.limits import Buckets, RateLimiter
from ember.store.accounts import Accounts, Users
from ember.store.api_keys import ApiKeys
from ember.store.db import Store
from ember.store.quotas import Quotas
from ember.store.usage import UsageMeter

log = logging.getLogger("ember.platform")


@dataclass
class Platform:
    store: Store
    config: PlatformConfig
    static_keys: tuple[str, ...] = ()
    max_running: int = 64
    """The scheduler's max_num_seqs: how many admitted sequences run rather than wait."""
    buckets: Buckets | None = None
    """Where rate-limit buckets live: None keeps them in this process; a cluster passes a shared one."""
    clock: Callable[[], float] = time.monotonic
    """The authenticator's clock (Authenticator)."""
    accounts: Accounts = field(init=False)
    users: Users = field(init=False)
    keys: ApiKeys = field(init=False)
    quotas: Quotas = field(init=False)
    auth: Authenticator = field(init=False)
    limiter: RateLimiter = field(init=False)
    meter: UsageMeter = field(init=False)
    inflight: int = 0
    """Sequences admitted and not yet finished (the API's view of the engine's queue, always current)."""

    def __post_init__(self) -> None:
        self.accounts = Accounts(self.store)
        self.users = Users(self.store)
        self.keys = ApiKeys(self.store)
        self.quotas = Quotas(self.store)
        self.auth = Authenticator(self.keys, self.accounts, self.config, self.static_keys, self.clock)
        self.limiter = RateLimiter(self.quotas, self.buckets)
        self.meter = UsageMeter(self.store)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def flush(self) -> None:
        """Write counted usage and keys' lastUsed (on a timer, before usage is read, at shutdown)."""
        self.meter.flush()
        self.keys.touch(self.auth.take_last_used())

    def tick(self) -> None:
        """Each second, off the request path: flush, and re-read quotas other processes may have changed."""
        self.flush()
        self.limiter.refresh()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ember-platform-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.config.usage_flush_s):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - kept in memory, retried next tick
                log.exception("platform flush failed; retrying")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.flush()
        finally:
            self.store.close()
