"""Bounds on uploads and the files they leave: how many at once, how much disk, how long
a silent body is waited for, how many unfinished imports a user may have, and when an
import's files go.

Limits on uploads in progress are per process (each API instance counts its own): they
bound what one instance holds open and writes at once, and a crashed instance leaks no
count. The bound on a user's unfinished imports is shared through the cache and checked
against the job records themselves, so it never drifts from the truth.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import msgspec

from ondoki.errors import (
    BodyTimeout,
    ConfigError,
    InsufficientStorage,
    NotFound,
    TooLarge,
    TooManyRequests,
)
from ondoki.models import FINAL_STATES, JobRecord
from ondoki.ports.cache import Cache
from ondoki.ports.jobs import JobQueue

log = logging.getLogger("ondoki.domain.uploads")

#: The name of an upload still being received; renamed to `SOURCE` once whole.
PARTIAL = "source.part"
SOURCE = "source"
# Job ids as the job queues make them (uuid4 hex); anything else is never a file name.
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# How often the free-space floor is checked again while a body is written.
_SPACE_CHECK_EVERY = 64 * 1024 * 1024
# What a client refused for a user's unfinished imports is told to wait: imports take
# minutes, and the count only goes down when one of them ends.
_ACTIVE_RETRY_AFTER = 30.0


@dataclass(frozen=True)
class UploadLimits:
    """Every bound on uploads; the defaults are the settings' defaults."""

    max_bytes: int = 2 * 1024**3
    max_concurrent: int = 16
    max_concurrent_per_user: int = 2
    max_active_imports_per_user: int = 5
    min_free_bytes: int = 1024**3
    idle_timeout: float = 30.0
    retention: float = 7 * 86_400.0


class UploadGate:
    """Admits an upload only while this process has fewer than `max_concurrent` in
    progress, and its user fewer than `max_concurrent_per_user`; else `TooManyRequests`."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self._per_user: dict[str, int] = {}
        self._total = 0

    @property
    def in_progress(self) -> int:
        return self._total

    @asynccontextmanager
    async def slot(self, user_id: str) -> AsyncIterator[None]:
        mine = self._per_user.get(user_id, 0)
        if mine >= self.limits.max_concurrent_per_user:
            raise TooManyRequests(
                f"you have {mine} uploads in progress; the limit is "
                f"{self.limits.max_concurrent_per_user} at once",
                retry_after=self.limits.idle_timeout,
            )
        if self._total >= self.limits.max_concurrent:
            raise TooManyRequests(
                "the server is taking as many uploads as it can; retry shortly",
                retry_after=self.limits.idle_timeout,
            )
        self._per_user[user_id] = mine + 1
        self._total += 1
        try:
            yield
        finally:
            self._total -= 1
            left = self._per_user[user_id] - 1
            if left:
                self._per_user[user_id] = left
            else:
                del self._per_user[user_id]


class ActiveImports:
    """A user's unfinished imports (queued, running, or failed and waiting to retry),
    remembered as job ids in the cache and counted against their records."""

    def __init__(self, cache: Cache, jobs: JobQueue, *, limit: int, ttl: float) -> None:
        self.cache = cache
        self.jobs = jobs
        self.limit = limit
        self.ttl = ttl

    async def unfinished(self, user_id: str) -> list[str]:
        raw = await self.cache.get(user_id)
        ids = [] if raw is None else msgspec.json.decode(raw, type=list[str])
        found: list[str] = []
        for job_id in ids:
            try:
                record = await self.jobs.get(job_id)
            except NotFound:
                continue  # expired: not running either
            if record.state not in FINAL_STATES:
                found.append(job_id)
        return found

    async def check(self, user_id: str) -> None:
        """`TooManyRequests` when the user already has `limit` unfinished imports."""
        count = len(await self.unfinished(user_id))
        if count >= self.limit:
            raise TooManyRequests(
                f"you have {count} imports queued or running; the limit is {self.limit}: "
                "wait for one to finish (or cancel one)",
                retry_after=_ACTIVE_RETRY_AFTER,
            )

    async def add(self, user_id: str, job_id: str) -> None:
        ids = await self.unfinished(user_id)
        if job_id not in ids:
            ids.append(job_id)
        await self.cache.set(user_id, msgspec.json.encode(ids), ttl=self.ttl)


class ImportFiles:
    """Where uploads live (`<root>/<upload>/source`, the guide beside it) and when they go:
    the source when its job succeeds or is cancelled (a dead job keeps it, for a retry),
    everything after `retention`, a partial upload once nobody is writing it.

    `<media_dir>/import-jobs/<job id>` names each job's upload directory, so that any
    process sharing the media directory (API or worker) can find a job's source.
    """

    def __init__(self, media_dir: Path, limits: UploadLimits) -> None:
        # Absolute: the job's paths are read by workers whose working directory may differ.
        self.root = (media_dir / "imports").resolve()
        self.index = (media_dir / "import-jobs").resolve()
        self.limits = limits

    def prepare(self) -> None:
        """Make the upload directory and write a file in it: `ConfigError` naming
        ONDOKI_MEDIA_DIR if that cannot be done (better at start than as a 500 on the first
        upload)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise ConfigError(
                "ONDOKI_MEDIA_DIR", f"cannot write uploads to {self.root}: {exc.strerror}"
            ) from None

    # -- receiving -------------------------------------------------------------------------

    def check_space(self, needed: int = 0) -> None:
        """`InsufficientStorage` unless `needed` more bytes leave `min_free_bytes` free."""
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if free - needed < self.limits.min_free_bytes:
            raise InsufficientStorage(
                "the server is short of disk space for uploads; retry later"
                + (f" (this one declares {needed} bytes)" if needed else "")
            )

    async def receive(self, body: AsyncIterable[bytes], directory: Path) -> Path:
        """Write `body` to `directory/source`: as `source.part` until it is whole, so a
        crash leaves nothing that looks finished. `TooLarge` past `max_bytes`,
        `BodyTimeout` when nothing arrives for `idle_timeout`, `InsufficientStorage` when
        the disk fills past the floor meanwhile."""
        limits = self.limits
        partial = directory / PARTIAL
        size = checked = 0
        chunks = aiter(body)
        async with await anyio.open_file(partial, "wb") as file:
            while True:
                try:
                    with anyio.fail_after(limits.idle_timeout):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise BodyTimeout(
                        f"no part of the upload arrived for {limits.idle_timeout:g} s"
                    ) from None
                size += len(chunk)
                if size > limits.max_bytes:
                    raise TooLarge(f"the video is over the limit of {limits.max_bytes} bytes")
                await file.write(chunk)
                if size - checked >= _SPACE_CHECK_EVERY:
                    checked = size
                    await anyio.to_thread.run_sync(self.check_space)
        source = directory / SOURCE
        await anyio.Path(partial).rename(source)
        return source

    # -- after the job ---------------------------------------------------------------------

    async def remember(self, job_id: str, directory: Path) -> None:
        """Note which upload `job_id` imports (see the class docstring)."""
        if _JOB_ID.fullmatch(job_id):
            await anyio.Path(self.index).mkdir(parents=True, exist_ok=True)
            await anyio.Path(self.index / job_id).write_text(directory.name)

    async def job_changed(self, record: JobRecord) -> None:
        """A JobNotify callback: drop the source of an import that succeeded or was
        cancelled; its guide stays for `retention`. Never raises (the sweep catches what
        this misses)."""
        if record.state not in ("succeeded", "cancelled") or not _JOB_ID.fullmatch(record.id):
            return
        try:
            name = (await anyio.Path(self.index / record.id).read_text()).strip()
        except FileNotFoundError:
            return  # not an import, or its upload has not noted it yet (it checks itself)
        except OSError as exc:
            log.warning("cannot read the upload of job %s: %s", record.id, exc)
            return
        await self.drop_source(self.root / name)

    async def drop_source(self, directory: Path) -> None:
        if directory.parent != self.root:
            return
        try:
            await anyio.Path(directory / SOURCE).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove the upload %s: %s", directory.name, exc)

    # -- sweeping --------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Remove imports (upload and guide) untouched for `retention`, and partial
        uploads nobody has written to for twice the idle timeout (a killed process's);
        how many upload directories went."""
        now = time.time()
        old = now - self.limits.retention
        stalled = now - 2 * self.limits.idle_timeout

        def sweep() -> int:
            removed = 0
            for directory in self.root.glob("*"):
                try:
                    if not directory.is_dir() or directory.name.startswith("."):
                        continue
                    partial = directory / PARTIAL
                    if directory.stat().st_mtime < old or (
                        partial.exists() and partial.stat().st_mtime < stalled
                    ):
                        shutil.rmtree(directory, ignore_errors=True)
                        removed += 1
                except FileNotFoundError:
                    continue  # another instance swept it first
            for entry in self.index.glob("*"):
                try:
                    if entry.stat().st_mtime < old:
                        entry.unlink()
                except FileNotFoundError:
                    continue
            return removed

        return await anyio.to_thread.run_sync(sweep)


JobCallback = Callable[[JobRecord], Awaitable[None]]


def notify_all(*callbacks: JobCallback) -> JobCallback:
    """One JobNotify that awaits each of `callbacks` in turn."""

    async def notify(record: JobRecord) -> None:
        for callback in callbacks:
            await callback(record)

    return notify
