"""Signed, expiring download URLs for dataset files: no bearer key needed, one file of one dataset each.

The signature is an HMAC-SHA256 over the account, dataset, file name and expiry time with a secret kept in
the store, so any ember process on the same database can check it and nobody without the secret can make
one, change the expiry, or point it at another file.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote

from ember.errors import PermissionDenied

DOWNLOAD_PREFIX = "/v1/datasetFiles"


class UrlSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, account_id: str, dataset_id: str, filename: str, expires: int) -> str:
        msg = "\n".join((account_id, dataset_id, filename, str(expires))).encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def url(self, base: str, account_id: str, dataset_id: str, filename: str, ttl_s: int) -> str:
        expires = int(time.time()) + ttl_s
        sig = self._mac(account_id, dataset_id, filename, expires)
        return (f"{base.rstrip('/')}{DOWNLOAD_PREFIX}/{account_id}/{dataset_id}/{quote(filename)}"
                f"?expires={expires}&signature={sig}")

    def check(self, account_id: str, dataset_id: str, filename: str, expires: str, signature: str) -> None:
        """Raise PermissionDenied unless the signature is ours and unexpired (same message either way
        for a bad signature, so a probe learns nothing)."""
        try:
            exp = int(expires)
        except ValueError:
            raise PermissionDenied("invalid download URL") from None
        good = self._mac(account_id, dataset_id, filename, exp)
        if not hmac.compare_digest(good.encode(), signature.encode("utf-8", "replace")):
            raise PermissionDenied("invalid download URL signature")
        if exp < time.time():
            raise PermissionDenied("this download URL has expired; ask :getDownloadEndpoint for a new one")
