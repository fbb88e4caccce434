"""Every error ondoki raises on purpose; adapters translate their libraries' errors into these."""

from __future__ import annotations


class OndokiError(Exception):
    """Base of every error ondoki raises on purpose."""

    #: A short machine-readable code, used in HTTP error bodies.
    code = "error"

    def __init__(self, message: str, **fields: object) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def __str__(self) -> str:
        return self.message


class ConfigError(OndokiError):
    """A setting is missing or has a bad value; `variable` names where it came from."""

    code = "bad_config"

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}", variable=variable)
        self.variable = variable


class InvalidInput(OndokiError):
    """The caller passed a value the operation cannot accept."""

    code = "invalid_input"


class UnsupportedMedia(InvalidInput):
    """The file is not a video ondoki can turn into a guide; `reason` says why.

    Its code is the one a body of the wrong content type gets: both mean "this endpoint
    cannot take what you sent" (HTTP 415), and the message says which.
    """

    code = "unsupported_media_type"

    def __init__(self, reason: str, **fields: object) -> None:
        super().__init__(f"unsupported video: {reason}", reason=reason, **fields)
        self.reason = reason


class NotFound(OndokiError):
    """The thing asked for does not exist (or has expired)."""

    code = "not_found"


class Unauthorized(OndokiError):
    """Missing, unknown or expired credentials."""

    code = "unauthorized"


class Forbidden(OndokiError):
    """Valid credentials that do not grant this operation."""

    code = "forbidden"


class TooLarge(OndokiError):
    """A value or body is over its size limit."""

    code = "too_large"


class TooManyRequests(OndokiError):
    """A limit on concurrent or repeated use was reached; `retry_after` says when (seconds)."""

    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: float, **fields: object) -> None:
        super().__init__(message, retry_after=retry_after, **fields)
        self.retry_after = retry_after


class InsufficientStorage(OndokiError):
    """The server has not enough free disk space to take this upload."""

    code = "insufficient_storage"


class BodyTimeout(OndokiError):
    """The client stopped sending its request body (nothing arrived for too long)."""

    code = "request_timeout"


class BackendError(OndokiError):
    """A backing service (Redis, broker) failed or could not be reached."""

    code = "backend_unavailable"


class CacheError(BackendError):
    """The cache could not complete an operation."""

    code = "cache_unavailable"


class SessionStoreError(BackendError):
    """The durable session store (PostgreSQL) could not complete an operation."""

    code = "sessions_unavailable"


class PubSubError(BackendError):
    """The pub/sub backend could not complete an operation."""

    code = "pubsub_unavailable"


class JobQueueError(BackendError):
    """The job queue could not complete an operation."""

    code = "jobqueue_unavailable"


class JobStateError(OndokiError):
    """The job is not in a state that allows the operation (e.g. retrying a running job)."""

    code = "job_state"


class RetryableJobError(OndokiError):
    """Raised by a job handler for a failure worth another attempt (after a backoff)."""

    code = "job_retryable"


class JobCancelled(OndokiError):
    """Raised inside a job handler (by `checkpoint`) when its job was cancelled."""

    code = "job_cancelled"

    def __init__(self, message: str = "the job was cancelled", **fields: object) -> None:
        super().__init__(message, **fields)


class JobInterrupted(JobCancelled):
    """Raised inside a job handler when its worker is stopping: the job goes back to its
    queue and the attempt is not counted."""

    code = "job_interrupted"

    def __init__(self, message: str = "the worker is stopping", **fields: object) -> None:
        super().__init__(message, **fields)


class JobTimedOut(JobCancelled):
    """Raised by `JobContext.checkpoint` once the job has run past its kind's time limit."""

    code = "job_timed_out"
