"""Who is asking: Bearer keys checked against the store (cached), static --api-key keys, or open mode.

Invariants: a key deleted in this process fails on its very next request here (the cache entry is
dropped at delete); a key deleted by another process sharing the database fails within `key_cache_s`;
an expired key fails on the first request after its expireTime. Keys never reach a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from starlette.requests import Request

from ember.config import PlatformConfig
from ember.errors import InvalidRequest, PermissionDenied, Unauthorized
from ember.store.accounts import Accounts
from ember.store.api_keys import ApiKeys, KeyOwner, digest
from ember.store.ids import utcnow

OPEN_ACCOUNT = "local"
"""The account that usage of unauthenticated (open) requests and static --api-key keys is billed to."""


@dataclass(frozen=True)
class Principal:
    account_id: str
    role: str
    """admin | user | inference-user"""
    key_id: str
    """The key's id ("open" when nobody authenticated; "static-…" for an --api-key key)."""
    user_id: str | None = None
    email: str = ""

    @property
    def manages(self) -> bool:
        """May use the management (Gateway) paths at all."""
        return self.user_id is not None and self.role in ("admin", "user")

    @property
    def cache_tenant(self) -> str | None:
        """Whose prefix cache a request of this principal uses: its account's; None where no account
        authenticated (open mode, a static --api-key key), which keeps one shared cache."""
        return self.account_id if self.user_id is not None else None

    def require_admin(self) -> None:
        if self.role != "admin":
            raise PermissionDenied("this needs an admin key of the account")


def authorization_of(request: Request) -> str | None:
    """The request's one Authorization header. Two are refused (400): proxies and frameworks disagree on
    which one counts, so a front end could check one key while ember served another."""
    values = request.headers.getlist("authorization")
    if len(values) > 1:
        raise InvalidRequest("send one Authorization header, not several")
    return values[0] if values else None


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    NEGATIVE_TTL_S = 1.0
    MAX_CACHED = 50_000

    def __init__(self, keys: ApiKeys, accounts: Accounts, config: PlatformConfig,
                 static_keys: tuple[str, ...] = (), clock: Callable[[], float] = time.monotonic) -> None:
        """`clock`: seconds, monotonic; what the key cache's and the open-mode recheck's ages are read on."""
        self.keys = keys
        self._clock = clock
        self.accounts = accounts
        self.config = config
        self._static = [(hashlib.sha256(k.encode()).digest(), f"static-{hashlib.sha256(k.encode()).hexdigest()[:8]}")
                        for k in static_keys]
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[KeyOwner | None, float]] = OrderedDict()
        self._last_used: dict[str, datetime] = {}
        self._open_checked = -1e9
        self._open = False

    # -- open mode -------------------------------------------------------------------------------
    def serves_open(self) -> bool:
        """Whether a request without a key is served (completions only, billed to account "local")."""
        if self._static or self.config.auth == "keys":
            return False
        if self.config.auth == "none":
            return True
        now = self._clock()
        if now - self._open_checked > 1.0:  # auto: open until the first account exists
            self._open = self.accounts.count() == 0
            self._open_checked = now
        return self._open

    # -- keys ------------------------------------------------------------------------------------
    def authenticate(self, authorization: str | None, *, inference: bool) -> Principal:
        token = bearer_token(authorization)
        if token is None:
            if authorization:
                raise Unauthorized("use 'Authorization: Bearer <API key>'")
            if inference and self.serves_open():
                return Principal(OPEN_ACCOUNT, "inference-user", "open")
            raise Unauthorized("missing API key: send 'Authorization: Bearer <API key>'")
        if self._static:
            d = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
            for sd, kid in self._static:
                if hmac.compare_digest(sd, d):
                    return Principal(OPEN_ACCOUNT, "inference-user", kid)
        owner = self._lookup(token)
        if owner is None:
            # Served open, a placeholder key (the SDKs insist on one: "unused") is nobody's key.
            if inference and self.serves_open():
                return Principal(OPEN_ACCOUNT, "inference-user", "open")
            raise Unauthorized("the API key you provided is invalid")
        if owner.expire_time is not None and owner.expire_time <= utcnow():
            raise Unauthorized("the API key you provided has expired")
        if owner.disabled:
            raise PermissionDenied("the user this API key belongs to is disabled")
        self._last_used[owner.key_id] = utcnow()
        return Principal(owner.account_id, owner.role, owner.key_id, owner.user_id, owner.email)

    def _lookup(self, token: str) -> KeyOwner | None:
        d = digest(token)
        now = self._clock()
        with self._lock:
            hit = self._cache.get(d)
        if hit is not None:
            owner, at = hit
            ttl = self.config.key_cache_s if owner is not None else self.NEGATIVE_TTL_S
            if now - at < ttl:
                return owner
        owner = self.keys.verify(token)
        with self._lock:
            self._cache[d] = (owner, now)
            self._cache.move_to_end(d)
            while len(self._cache) > self.MAX_CACHED:
                self._cache.popitem(last=False)
        return owner

    def forget(self, key_id: str) -> None:
        """A key was deleted here: drop it from the cache so its next request is refused."""
        with self._lock:
            for d in [d for d, (o, _) in self._cache.items() if o is not None and o.key_id == key_id]:
                del self._cache[d]

    def forget_user(self, account_id: str, user_id: str) -> None:
        """A user's role changed here: its keys are verified afresh on their next request."""
        with self._lock:
            for d in [d for d, (o, _) in self._cache.items()
                      if o is not None and (o.account_id, o.user_id) == (account_id, user_id)]:
                del self._cache[d]

    def forget_negative(self) -> None:
        """A key was created here: unknown-key entries must not hide it."""
        with self._lock:
            for d in [d for d, (o, _) in self._cache.items() if o is None]:
                del self._cache[d]

    def take_last_used(self) -> dict[str, datetime]:
        with self._lock:
            out, self._last_used = self._last_used, {}
        return out
