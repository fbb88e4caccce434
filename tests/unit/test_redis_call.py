"""`connection.call`: what is retried after a lost connection, and what never is."""

from __future__ import annotations

import pytest
import redis.exceptions as rex

from ondoki.errors import PubSubError
from ondoki_adapters.redis.connection import call, call_blocking

pytestmark = pytest.mark.anyio


class Flaky:
    """An operation whose first `failures` calls lose their connection."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        return self.sync()

    def sync(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise rex.ConnectionError("Connection closed by server.")
        return "done"


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_non_idempotent_operation_is_tried_once() -> None:
    # A lost reply may mean it was applied: sending it again could apply it twice.
    operation = Flaky(1)
    with pytest.raises(PubSubError, match="publish: cannot reach Redis"):
        await call(operation, error=PubSubError, what="publish", idempotent=False, deadline=5)
    assert operation.calls == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_an_idempotent_operation_is_retried_after_a_lost_connection() -> None:
    operation = Flaky(2)
    result = await call(
        operation, error=PubSubError, what="publish", idempotent=True, deadline=5, backoff=0
    )
    assert (result, operation.calls) == ("done", 3)


def test_the_blocking_call_retries_the_same_way() -> None:
    once = Flaky(1)
    with pytest.raises(PubSubError, match="publish: cannot reach Redis"):
        call_blocking(once.sync, error=PubSubError, what="publish", idempotent=False)
    assert once.calls == 1
    twice = Flaky(2)
    result = call_blocking(
        twice.sync, error=PubSubError, what="publish", idempotent=True, backoff=0
    )
    assert (result, twice.calls) == ("done", 3)
