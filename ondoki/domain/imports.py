"""Video imports: take an upload, check it, queue the `media.import` job, serve its guide."""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import msgspec

from ondoki.domain.media import KIND, QUEUE, Guide, read_guide
from ondoki.domain.namespaces import NamespacedCache
from ondoki.domain.uploads import ActiveImports, ImportFiles, UploadGate, UploadLimits
from ondoki.errors import InvalidInput, JobStateError, NotFound, TooLarge
from ondoki.models import JobRecord
from ondoki.ports.cache import Cache
from ondoki.ports.jobs import JobQueue
from ondoki.ports.media import MediaLimits, VideoProbe

log = logging.getLogger("ondoki.domain.imports")

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")
#: Caption files an upload may carry, and their largest size.
CAPTION_SUFFIXES = (".srt", ".vtt")
MAX_CAPTION_BYTES = 8 * 1024 * 1024
#: A guide's title when the upload names none (never the stored file's name).
UNTITLED = "Untitled video"
_TITLE_LENGTH = 200


@dataclass
class UploadDetails:
    """What may come with a video: its title (e.g. from its file name) and a caption file.

    A multipart body fills this in as it is read, so `Imports.upload` reads it only once
    the body is exhausted.
    """

    title: str | None = None
    captions: bytes | None = None
    captions_suffix: str = ".srt"


def guide_title(raw: str | None) -> str:
    """`raw` as a title: one line, no control characters, at most 200 characters;
    `UNTITLED` when nothing is left."""
    text = " ".join("".join(c if c.isprintable() else " " for c in raw or "").split())
    return text[:_TITLE_LENGTH].rstrip() or UNTITLED


_FRAME_NAME = re.compile(r"frames/step-\d{3,6}\.jpg")


class Imports:
    """Uploads are streamed to `media_dir/imports/<upload>/source` (never held in memory),
    checked with `probe` (a `VideoProbe`), and queued; the worker writes the guide beside
    them.

    The API and the workers must see the same `media_dir` (one host, or a shared volume).
    """

    def __init__(
        self,
        jobs: JobQueue,
        cache: Cache,
        media_dir: Path,
        *,
        max_bytes: int,
        limits: MediaLimits | None = None,
        key_ttl: float,
        probe: VideoProbe,
        uploads: UploadLimits | None = None,
    ) -> None:
        self.jobs = jobs
        self.probe = probe
        self.cache = cache
        self.max_bytes = max_bytes
        self.limits = limits or MediaLimits()
        self.key_ttl = key_ttl
        self.upload_limits = dataclasses.replace(uploads or UploadLimits(), max_bytes=max_bytes)
        self.files = ImportFiles(media_dir, self.upload_limits)
        self.root = self.files.root
        self.gate = UploadGate(self.upload_limits)
        self.active = ActiveImports(
            NamespacedCache(cache, "active:"),
            jobs,
            limit=self.upload_limits.max_active_imports_per_user,
            ttl=key_ttl,
        )

    async def run(
        self,
        *,
        every: float = 3600.0,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sweep imports at start (partial uploads a killed process left) and then every
        `every` seconds, for the life of the service."""
        task_status.started()
        while True:
            removed = await self.sweep()
            if removed:
                log.info("removed %d old or abandoned import(s)", removed)
            await anyio.sleep(every)

    async def sweep(self) -> int:
        """Remove imports untouched for the retention period and partial uploads nobody
        writes any more (see `ImportFiles.sweep`). A dead import keeps its video until
        then, so it can still be retried."""
        return await self.files.sweep()

    async def known(self, user_id: str, idempotency_key: str | None) -> str | None:
        """The job already made for this key, if the cache remembers it (a fast path that
        spares a client's retry the upload; the queue's own check is the guarantee)."""
        if idempotency_key is None:
            return None
        value = await self.cache.get(self._key(user_id, check_key(idempotency_key)))
        return None if value is None else value.decode()

    async def upload(
        self,
        user_id: str,
        body: AsyncIterable[bytes],
        *,
        idempotency_key: str | None = None,
        declared_bytes: int | None = None,
        details: UploadDetails | None = None,
    ) -> str:
        """Store the video, check it, queue its import; the job's id. Before reading a
        byte: `TooManyRequests` when the user has too many unfinished imports or uploads
        in progress, or this instance too many uploads; `InsufficientStorage` when the
        media directory would fall under its free-space floor. While reading: `TooLarge`
        past `max_bytes`, `BodyTimeout` when the body stalls. Then `UnsupportedMedia` for
        what is not an importable video, `InvalidInput` for an unusable caption file. On any
        error nothing is kept. `details` (title, captions) is read after `body` is
        exhausted."""
        key = None if idempotency_key is None else check_key(idempotency_key)
        await self.active.check(user_id)
        async with self.gate.slot(user_id):
            await anyio.to_thread.run_sync(self.files.check_space, declared_bytes or 0)
            started = time.time()
            directory = self.root / secrets.token_hex(12)
            await anyio.Path(directory).mkdir(parents=True)
            try:
                source = await self.files.receive(body, directory)
                payload = {
                    "video_path": str(source),
                    "output_dir": str(directory / "guide"),
                    **await self._details(details or UploadDetails(), directory),
                }
                await anyio.to_thread.run_sync(lambda: self.probe.probe(source, limits=self.limits))
                job_id = await self.jobs.enqueue(
                    KIND,
                    payload,
                    queue=QUEUE,
                    owner=user_id,
                    idempotency_key=key,
                )
            except BaseException:
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(directory, True))
                raise
        record = await self.jobs.get(job_id)
        if key is not None and record.created_at < started:
            # Someone sent this key before: that job stands, this copy goes.
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(directory, True))
        else:
            await self.files.remember(job_id, directory)
            if record.state in ("succeeded", "cancelled"):
                # It ended before it was remembered: its end found no source to drop.
                await self.files.drop_source(directory)
            await self.active.add(user_id, job_id)
        if key is not None:
            await self.cache.set(self._key(user_id, key), job_id.encode(), ttl=self.key_ttl)
        return job_id

    @staticmethod
    async def _details(details: UploadDetails, directory: Path) -> dict[str, str]:
        found = {"title": guide_title(details.title)}
        if details.captions is not None:
            if details.captions_suffix not in CAPTION_SUFFIXES:
                raise InvalidInput("the captions file must be .srt or .vtt")
            if len(details.captions) > MAX_CAPTION_BYTES:
                raise TooLarge(f"the captions file is over {MAX_CAPTION_BYTES} bytes")
            if b"-->" not in details.captions:
                raise InvalidInput("the captions file has no cues (expected .srt or .vtt)")
            path = directory / f"captions{details.captions_suffix}"
            await anyio.Path(path).write_bytes(details.captions)
            found["captions_path"] = str(path)
        return found

    async def guide(self, record: JobRecord) -> tuple[Guide, Path]:
        """The published guide of an import job, and its directory."""
        directory = self.guide_dir(record)
        try:
            guide = await anyio.to_thread.run_sync(read_guide, directory)
        except FileNotFoundError:
            raise NotFound("the guide is gone (its files were removed)") from None
        return guide, directory

    def frame(self, guide: Guide, directory: Path, name: str) -> Path:
        """The path of one of the guide's frames; only names the guide lists are served."""
        if not _FRAME_NAME.fullmatch(name) or name not in {s.frame for s in guide.steps}:
            raise NotFound(f"the guide has no frame {name!r}")
        return directory / name

    def guide_dir(self, record: JobRecord) -> Path:
        """Where a succeeded import's guide is; `NotFound` / `JobStateError` otherwise."""
        if record.kind != KIND:
            raise NotFound("that job is not an import")
        if record.state != "succeeded":
            progress = f", {record.stage or 'waiting'} at {record.progress:.0%}"
            raise JobStateError(f"the guide is not ready: the job is {record.state}{progress}")
        result = record.result if isinstance(record.result, dict) else {}
        guide_json = Path(str(result.get("guide", "")))
        if guide_json.parent.parent.parent != self.root:
            raise NotFound("the job's guide is not in this service's media directory")
        return guide_json.parent

    @staticmethod
    def _key(user_id: str, key: str) -> str:
        return f"{user_id}/{key}"


def public(record: JobRecord) -> JobRecord:
    """`record` as its owner sees it: an import's result names its guide by URL, not by the
    server's file path."""
    result = record.result
    if record.kind != KIND or not isinstance(result, dict) or "guide" not in result:
        return record
    return msgspec.structs.replace(
        record, result={**result, "guide": f"/imports/{record.id}/guide"}
    )


def check_key(key: str) -> str:
    """`key` if it is a usable Idempotency-Key (1-128 visible ASCII characters)."""
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidInput("Idempotency-Key must be 1-128 visible ASCII characters")
    return key
