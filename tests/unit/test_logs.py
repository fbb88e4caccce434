"""Logs are JSON lines with request IDs and never carry a secret."""

from __future__ import annotations

import io
import json
import logging

from ondoki.support.logs import JsonFormatter, Redactor, request_id, secrets_of


def log_line(redactor: Redactor, message: str, *args: object, **extra: object) -> dict[str, object]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(redactor))
    logger = logging.getLogger("test.logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel("INFO")
    logger.info(message, *args, extra=extra)
    line = stream.getvalue()
    assert line.count("\n") == 1
    parsed: dict[str, object] = json.loads(line)
    return parsed


def test_one_json_event_with_request_id_and_extras() -> None:
    token = request_id.set("req-123")
    try:
        event = log_line(Redactor(), "hello %s", "world", user="alice")
    finally:
        request_id.reset(token)
    assert event["msg"] == "hello world"
    assert event["request_id"] == "req-123"
    assert event["user"] == "alice"
    assert event["level"] == "info"


def test_secrets_are_redacted_wherever_they_appear() -> None:
    redactor = Redactor(secrets_of(["redis://:p%40ss-word-1@h/0"], "the-api-key-value"))
    event = log_line(
        redactor,
        "connecting to %s with %s, header %s, key %s, unix %s",
        "rediss://user:hunter2hunter2@cache:6380/0",
        "redis://:p%40ss-word-1@h/0",
        "Authorization: Bearer abc.DEF-ghi_123",
        "the-api-key-value",
        "unix:///s.sock?db=0&password=sockpw",
        url="redis://:extra-secret@h/0",
    )
    text = json.dumps(event)
    for secret in ("hunter2hunter2", "p%40ss-word-1", "p@ss-word-1", "abc.DEF-ghi_123",
                   "the-api-key-value", "sockpw", "extra-secret"):  # fmt: skip
        assert secret not in text, secret
    assert "rediss://user:***@cache:6380/0" in text
    assert "Bearer ***" in text


def test_a_secret_with_quotes_and_backslashes_is_redacted_in_the_json_line() -> None:
    # The line is redacted after JSON encoding, where `"` and `\` are escaped.
    secret = 'key"with\\odd-chars'
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(Redactor([secret])))
    logger = logging.getLogger("test.logs.escaped")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.info("the key is %s", secret)
    line = stream.getvalue()
    assert json.loads(line)["msg"] == "the key is ***"
    assert secret not in json.loads(line)["msg"]


def test_tracebacks_are_redacted() -> None:
    redactor = Redactor(["s3cr3t-value"])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(redactor))
    logger = logging.getLogger("test.logs.exc")
    logger.handlers[:] = [handler]
    logger.propagate = False
    try:
        raise RuntimeError("failed with s3cr3t-value")
    except RuntimeError:
        logger.exception("boom")
    assert "s3cr3t-value" not in stream.getvalue()
    assert "RuntimeError" in stream.getvalue()


def test_database_url_password_is_redacted() -> None:
    url = "postgresql://ondoki:s3cr%2Ft-pw@db:5432/ondoki?sslmode=require"
    redact = Redactor(secrets_of([url]))
    line = redact(f"connecting to {url}; password s3cr/t-pw rejected")
    assert "s3cr" not in line
    assert "postgresql://ondoki:***@db:5432/ondoki" in line
