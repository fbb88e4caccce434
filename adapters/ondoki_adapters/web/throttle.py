"""Failed API-key attempts, counted per client address: a guesser is slowed to a crawl."""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from prometheus_client import CollectorRegistry, Counter


class ApiKeyGuard:
    """At most `limit` failed API-key attempts per client address in a fixed window of
    `window` seconds; past it every API-key request from that address, right key or wrong,
    is refused until the window ends (else guessing would go on at full speed).

    Counts live in this process (each instance limits on its own) and cover the
    `max_addresses` most recently failing addresses: an attacker rotating through more
    addresses than that only evicts its own oldest entries.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        limit: int = 10,
        window: float = 60.0,
        max_addresses: int = 10_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self.counted = Counter(
            "ondoki_api_key_failures",
            "Requests refused for the API key: wrong or missing (401) or throttled (429)",
            ["outcome"],
            registry=registry,
        )

    def configure(self, *, limit: int, window: float) -> None:
        self.limit, self.window = limit, window

    def retry_after(self, address: str) -> float | None:
        """Seconds until `address` may try again, or None if it may now."""
        found = self._windows.get(address)
        if found is None:
            return None
        started, failures = found
        left = started + self.window - time.monotonic()
        if left <= 0:
            del self._windows[address]
            return None
        if failures < self.limit:
            return None
        self.counted.labels("throttled").inc()
        return left

    def failed(self, address: str) -> None:
        """Count one failed attempt from `address`."""
        self.counted.labels("refused").inc()
        now = time.monotonic()
        started, failures = self._windows.pop(address, (now, 0))
        if started + self.window <= now:
            started, failures = now, 0
        self._windows[address] = (started, failures + 1)
        while len(self._windows) > self.max_addresses:
            self._windows.popitem(last=False)


def seconds_header(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
