"""Signed, expiring download URLs for dataset files: no bearer key needed, one file of one dataset each.

The signature is an HMAC-SHA256 over the account, dataset, file name, expiry time and the id of the API
key that asked for the URL, with a secret kept in the store, so any ember process on the same database
can check it and nobody without the secret can make one, change the expiry, or point it at another file.

Invariants a URL must meet to be served, besides its signature:
- `expires` is in the future and at most the URL lifetime (`download_url_ttl_s`) ahead, so even a URL
  signed with a leaked secret cannot outlive that lifetime;
- the key it was made for is still live (not deleted, not expired, its user not disabled): revoking the
  key revokes its URLs;
- it was signed with the current secret. `ember secrets rotate-signing-key` replaces the secret in the
  store; every URL signed before stops working (no grace period: a rotation is for a secret that may
  have leaked) within SECRET_REFRESH_S on every server sharing the store.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

from starlette.requests import Request

from ember.errors import PermissionDenied

DOWNLOAD_PREFIX = "/v1/datasetFiles"
SECRET_REFRESH_S = 5.0
"""How long a process signs and checks with the secret it read before it reads it again."""
CLOCK_SKEW_S = 5
"""Slack on the lifetime bound for servers sharing a store whose clocks differ slightly."""


class UrlSigner:
    def __init__(self, load_secret: Callable[[], bytes], ttl_s: int,
                 key_is_live: Callable[[str, str], bool]) -> None:
        """`load_secret` reads the current secret from the store; `key_is_live(account_id, key_id)` says
        whether that key may still use what it was given."""
        self._load = load_secret
        self.ttl_s = ttl_s
        self._key_is_live = key_is_live
        self._lock = threading.Lock()
        self._secret = load_secret()
        self._read_at = time.monotonic()

    def reload(self) -> None:
        """Read the secret from the store again now."""
        secret = self._load()
        with self._lock:
            self._secret, self._read_at = secret, time.monotonic()

    def _current(self) -> bytes:
        if time.monotonic() - self._read_at > SECRET_REFRESH_S:
            self.reload()
        return self._secret

    def _mac(self, secret: bytes, account_id: str, dataset_id: str, filename: str, expires: int,
             key_id: str) -> str:
        msg = "\n".join((account_id, dataset_id, filename, str(expires), key_id)).encode()
        return hmac.new(secret, msg, hashlib.sha256).hexdigest()

    def url(self, base: str, account_id: str, dataset_id: str, filename: str, key_id: str,
            ttl_s: int | None = None) -> str:
        """A URL for `key_id`, good for `ttl_s` (default: the configured lifetime, which is also the most
        that `check` accepts)."""
        expires = int(time.time()) + (self.ttl_s if ttl_s is None else ttl_s)
        sig = self._mac(self._current(), account_id, dataset_id, filename, expires, key_id)
        return (f"{base.rstrip('/')}{DOWNLOAD_PREFIX}/{account_id}/{dataset_id}/{quote(filename)}"
                f"?expires={expires}&kid={quote(key_id)}&signature={sig}")

    def check(self, account_id: str, dataset_id: str, filename: str, expires: str, key_id: str,
              signature: str) -> None:
        """Raise PermissionDenied unless the URL meets every invariant above (the same message for any
        bad signature, so a probe learns nothing)."""
        try:
            exp = int(expires)
        except ValueError:
            raise PermissionDenied("invalid download URL") from None
        good = self._mac(self._current(), account_id, dataset_id, filename, exp, key_id)
        if not hmac.compare_digest(good.encode(), signature.encode("utf-8", "replace")):
            raise PermissionDenied("invalid download URL signature")
        now = time.time()
        if exp < now:
            raise PermissionDenied("this download URL has expired; ask :getDownloadEndpoint for a new one")
        if exp > now + self.ttl_s + CLOCK_SKEW_S:
            raise PermissionDenied(f"invalid download URL: it expires more than {self.ttl_s} s from now")
        if not self._key_is_live(account_id, key_id):
            raise PermissionDenied("the API key this download URL was made for has been revoked")


def own_address(request: Request) -> str:
    """The base URL of the socket this request came in on (its local address, which the client cannot
    choose), for a server without `--public-url`. Never the Host header: a client could name any host
    there and have the server hand out links to it."""
    server = request.scope.get("server")
    if not server or server[1] is None:
        return str(request.base_url)  # a transport without a socket (in-process test clients)
    host, port = server
    host = f"[{host}]" if ":" in host else host
    return f"{request.url.scheme}://{host}:{port}"
