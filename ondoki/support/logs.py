"""Structured logs: one JSON event per line, request IDs, and no secret ever written."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote

import msgspec

from ondoki.support.redact import url_password

#: The ID of the request being handled, set by the web adapter; logged with every event.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# scheme://user:password@host -> scheme://user:***@host, whatever the scheme.
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@]+@")
_BEARER = re.compile(r"(?i)(bearer[ .])[A-Za-z0-9._~+/=-]+")
_QUERY_PASSWORD = re.compile(r"(?i)(password=)[^&\s\"']+")

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class Redactor:
    """Replaces secrets in text: URL passwords, bearer tokens, and any known secret value."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known = {s for s in secrets if s and len(s) >= 4}
        # Each also as a JSON string holds it: the JSON formatter redacts encoded lines, in
        # which a secret's `"` or `\` are escaped.
        known |= {msgspec.json.encode(s).decode()[1:-1] for s in known}
        self.secrets = sorted(known, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = _URL_PASSWORD.sub(r"\1***@", text)
        text = _BEARER.sub(r"\1***", text)
        text = _QUERY_PASSWORD.sub(r"\1***", text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def secrets_of(urls: Iterable[str | None], *others: str | None) -> list[str]:
    """The passwords inside `urls` (raw and URL-decoded) and the other secrets given."""
    found = [s for s in others if s]
    for url in urls:
        password = url_password(url) if url else None
        if password:
            found += [password, unquote(password)]
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, extras, exc."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact
        self._encode = msgspec.json.Encoder(enc_hook=str).encode

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            event["request_id"] = rid
        event.update(
            (key, value)
            for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")
        )
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        # Redact the encoded line: it covers the message, its arguments, extras, tracebacks.
        return self.redact(self._encode(event).decode())


def configure_logging(level: str, secrets: Iterable[str] = ()) -> Redactor:
    """Send every logger's events to stderr as redacted JSON lines."""
    redact = Redactor(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return redact
