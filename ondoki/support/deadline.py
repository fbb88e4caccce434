"""One time budget for every backend call a request makes, however many it makes.

The web adapter opens a budget per HTTP request (`budget()`); a backend adapter asks
`allowance(timeout)` before each operation (its retries and pool waits included) and
reports what it used with `spend`. Outside a request the adapter's own timeout applies to
each operation alone. Code that runs a call on another thread's event loop for the caller
hands that loop the caller's budget (`current`, then `carried` there): one budget, spent
from both sides, so a budget takes a lock to change.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class Budget:
    """Seconds left for backend calls; set by the first call (its adapter's timeout).

    Safe to spend from several threads at once (a trio request's job calls run on an
    asyncio thread while its other calls run on trio): no spending is lost.
    """

    __slots__ = ("_lock", "left")

    def __init__(self) -> None:
        self.left: float | None = None
        self._lock = threading.Lock()

    def begin(self, timeout: float) -> float:
        """The seconds left, starting the budget at `timeout` if no call has yet."""
        with self._lock:
            if self.left is None:
                self.left = timeout
            return self.left

    def spend(self, seconds: float) -> None:
        with self._lock:
            if self.left is not None:
                self.left = max(0.0, self.left - seconds)


_current: ContextVar[Budget | None] = ContextVar("ondoki_backend_budget", default=None)


@contextmanager
def budget() -> Iterator[Budget]:
    """A fresh budget for the calls made inside (and in tasks started inside)."""
    fresh = Budget()
    with carried(fresh):
        yield fresh


def current() -> Budget | None:
    """The budget the running code spends from, if any: to hand to `carried`."""
    return _current.get()


@contextmanager
def carried(over: Budget | None) -> Iterator[None]:
    """Spend from `over` (a caller's `current()`, taken on its own event loop) inside;
    None: no budget, as for a caller outside any request."""
    token = _current.set(over)
    try:
        yield
    finally:
        _current.reset(token)


def allowance(timeout: float) -> tuple[float, Budget | None]:
    """How long the next backend operation may take: `timeout`, or what is left of the
    surrounding budget (which starts at the first operation's `timeout`)."""
    current = _current.get()
    if current is None:
        return timeout, None
    return min(timeout, current.begin(timeout)), current
