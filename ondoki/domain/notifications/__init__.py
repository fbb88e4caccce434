"""Notifications: publish per-user events, and serve them to connected clients.

- `protocol`: what a channel stores, the JSON messages of the WebSocket protocol, close
  codes, and `Frame` (one encoded text frame for every local client it goes to);
- `publishing`: `Publisher` checks, encodes and publishes events (one, a batch, a broadcast);
  `EventEncoder` is its pure half, for publishers that are not async;
- `outbox`: a client's frames on their way, bounded in bytes;
- `hub`: `NotificationHub` serves each connected client (a `ClientConnection` the web adapter
  makes of an accepted WebSocket) its user's events, resumes and pings; its `run` (started
  by the composition root) does the work clients share;
- `job_events`: job changes as notifications to the job's owner.
"""

from ondoki.domain.notifications.hub import ClientConnection, HubStats, NotificationHub
from ondoki.domain.notifications.job_events import job_notifier
from ondoki.domain.notifications.protocol import (
    ClientClosed,
    CloseCode,
    EndSession,
    Event,
    Frame,
)
from ondoki.domain.notifications.publishing import EventEncoder, Publisher, UserEvent

__all__ = [
    "ClientClosed",
    "ClientConnection",
    "CloseCode",
    "EndSession",
    "Event",
    "EventEncoder",
    "Frame",
    "HubStats",
    "NotificationHub",
    "Publisher",
    "UserEvent",
    "job_notifier",
]
