"""Which replica a request belongs to: the affinity key, and a consistent-hash ring over replicas.

The prefix cache only pays when every turn of a session lands on the replica that already holds its
prefix. A client names its session with the `x-session-affinity` header or the `prompt_cache_key` field;
`prompt_cache_isolation_key` scopes either (two tenants with the same session name never share a
replica's cache entries, and need not share a replica).

The ring is a pure function of the replica ids, so every Serve proxy (one per node) builds the same ring
and sends a key to the same replica without talking to the others. Adding or removing a replica moves
only the keys whose points fall in its arcs: about 1/N of them.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterable

SESSION_HEADER = "x-session-affinity"
"""Fireworks' header; Ray Serve's proxy reads its session id from it (RAY_SERVE_SESSION_ID_HEADER_KEY)."""
REPLICA_HEADER = "x-ember-replica"
"""Set on every response served by a replica: which one served it."""
SEPARATOR = "\x1f"
MAX_BODY_BYTES = 1 << 20
"""Bodies past this are not parsed for prompt_cache_key (they route without a key)."""


def affinity_key(header: str | None, body: dict | None) -> str | None:
    """The routing key of a request, or None when it names no session.

    The header wins over the body's prompt_cache_key; the isolation key, when given, prefixes either."""
    body = body if isinstance(body, dict) else {}
    session = header or body.get("prompt_cache_key")
    if not isinstance(session, str) or not session:
        return None
    iso = body.get("prompt_cache_isolation_key")
    return f"{iso}{SEPARATOR}{session}" if isinstance(iso, str) and iso else session


def key_from_body(raw: bytes, header: str | None) -> str | None:
    """affinity_key from a raw JSON body (anything that is not a JSON object counts as no body)."""
    body = None
    if raw and len(raw) <= MAX_BODY_BYTES:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = None
    return affinity_key(header, body)


def _point(s: str) -> int:
    # blake2b, not hash(): Python salts str hashes per process, and every proxy must agree on the ring.
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big")


class HashRing:
    """A consistent-hash ring: each replica owns `vnodes` points; a key belongs to the first point at or
    after its own hash, and its fallbacks are the next distinct replicas clockwise."""

    def __init__(self, replicas: Iterable[str] = (), vnodes: int = 100) -> None:
        self.vnodes = vnodes
        self._points: list[int] = []
        self._owners: list[str] = []
        self._replicas: set[str] = set()
        self.set_replicas(replicas)

    @property
    def replicas(self) -> frozenset[str]:
        return frozenset(self._replicas)

    def set_replicas(self, replicas: Iterable[str]) -> None:
        self._replicas = set(replicas)
        pts = sorted((_point(f"{r}#{i}"), r) for r in self._replicas for i in range(self.vnodes))
        self._points = [p for p, _ in pts]
        self._owners = [r for _, r in pts]

    def add(self, replica: str) -> None:
        self.set_replicas(self._replicas | {replica})

    def remove(self, replica: str) -> None:
        self.set_replicas(self._replicas - {replica})

    def owners(self, key: str, n: int = 2) -> list[str]:
        """The key's owner first, then up to n-1 distinct fallbacks in ring order."""
        if not self._points:
            return []
        want = min(n, len(self._replicas))
        out: list[str] = []
        i = bisect.bisect_left(self._points, _point(key))
        for j in range(len(self._points)):
            r = self._owners[(i + j) % len(self._points)]
            if r not in out:
                out.append(r)
                if len(out) == want:
                    break
        return out

    def owner(self, key: str) -> str | None:
        o = self.owners(key, 1)
        return o[0] if o else None
