"""The services bundle that entry points (web, CLI) are handed by the composition root."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ondoki.domain.imports import Imports
from ondoki.domain.notifications import NotificationHub
from ondoki.domain.sessions import Sessions
from ondoki.domain.signed_urls import UrlSigner
from ondoki.domain.state import TemporaryState
from ondoki.ports.cache import Cache
from ondoki.ports.jobs import JobQueue
from ondoki.ports.pubsub import PubSub
from ondoki.support.settings import Settings


class Pingable(Protocol):
    async def ping(self) -> None: ...


@dataclass
class Services:
    """Everything the entry points (web, CLI) use; built and closed by `open_services`."""

    settings: Settings
    api_key: str
    cache: Cache
    sessions: Sessions
    state: TemporaryState
    pubsub: PubSub
    notifications: NotificationHub
    jobs: JobQueue
    imports: Imports
    #: Signs frame URLs (`<img>` cannot send a bearer token).
    urls: UrlSigner
    #: Part name -> the object whose `ping()` tells whether that part is ready.
    parts: dict[str, Pingable] = field(default_factory=dict)
    #: The doctor's findings about the configured backends (JSON-able), for `/admin`.
    diagnose: Callable[[], Awaitable[list[Any]]] | None = None
