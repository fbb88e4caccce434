"""Signed, expiring URLs: a capability to GET one path until a time, for clients that cannot
send an Authorization header (an `<img src>`). Every instance must share the key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable

from ondoki.errors import Forbidden

#: Expiry times are rounded up to this many seconds, so that the same picture keeps the
#: same URL for a while and a browser's cache can reuse it.
_DIGITS = re.compile(r"[0-9]{1,12}")
ROUNDING_SECONDS = 300


class UrlSigner:
    """Signs `path` with HMAC-SHA256 over the path and its expiry time."""

    def __init__(self, key: str, *, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self.ttl = ttl
        self.clock = clock

    def _signature(self, path: str, expires: int) -> str:
        digest = hmac.new(self.key.encode(), f"{path}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, path: str) -> str:
        """`path` with `expires` and `signature` query parameters; valid for at least `ttl`
        seconds (at most `ttl` + `ROUNDING_SECONDS`)."""
        expires = math.ceil((self.clock() + self.ttl) / ROUNDING_SECONDS) * ROUNDING_SECONDS
        return f"{path}?expires={expires}&signature={self._signature(path, expires)}"

    def verify(self, path: str, expires: str | None, signature: str | None) -> None:
        """Return if the URL was signed by this key for `path` and has not expired;
        `Forbidden` (naming which) otherwise."""
        if not expires or not signature or not _DIGITS.fullmatch(expires):
            raise Forbidden("a signed URL needs `expires` and `signature`")
        # Compared as bytes: compare_digest refuses text that is not ASCII.
        expected = self._signature(path, int(expires)).encode()
        if not hmac.compare_digest(expected, signature.encode()):
            raise Forbidden("the URL's signature does not match (was it changed?)")
        if int(expires) < self.clock():
            raise Forbidden("the signed URL has expired: fetch the guide again for a new one")
