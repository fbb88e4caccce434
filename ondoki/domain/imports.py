"""Video imports: take an upload, check it, queue the `media.import` job, serve its guide."""

from __future__ import annotations

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
    ) -> None:
        self.jobs = jobs
        self.probe = probe
        self.cache = cache
        # Absolute: the job's paths are read by workers whose working directory may differ.
        self.root = (media_dir / "imports").resolve()
        self.max_bytes = max_bytes
        self.limits = limits or MediaLimits()
        self.key_ttl = key_ttl

    async def run(
        self,
        *,
        every: float = 3600.0,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sweep old imports every `every` seconds, for the life of the service."""
        task_status.started()
        while True:
            removed = await self.sweep()
            if removed:
                log.info("removed %d import(s) older than their job records", removed)
            await anyio.sleep(every)

    async def sweep(self) -> int:
        """Remove imports (upload and guide) untouched for longer than their job records
        live: nobody can ask for them any more. Dead and cancelled imports are kept as long
        as their records, so a dead one can still be retried."""
        horizon = time.time() - self.key_ttl

        def sweep() -> int:
            removed = 0
            for directory in self.root.glob("*"):
                try:
                    if directory.is_dir() and directory.stat().st_mtime < horizon:
                        shutil.rmtree(directory, ignore_errors=True)
                        removed += 1
                except FileNotFoundError:
                    continue  # another instance swept it first
            return removed

        return await anyio.to_thread.run_sync(sweep)

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
        details: UploadDetails | None = None,
    ) -> str:
        """Store the video, check it, queue its import; the job's id. Raises `TooLarge` past
        `max_bytes`, `UnsupportedMedia` for what is not an importable video and
        `InvalidInput` for an unusable caption file; either way nothing is kept. `details`
        (title, captions) is read after `body` is exhausted."""
        key = None if idempotency_key is None else check_key(idempotency_key)
        started = time.time()
        directory = self.root / secrets.token_hex(12)
        source = directory / "source"
        await anyio.Path(directory).mkdir(parents=True)
        try:
            await self._receive(body, source)
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
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(directory, ignore_errors=True))
            raise
        if key is not None:
            record = await self.jobs.get(job_id)
            if record.created_at < started:
                # Someone sent this key before: that job stands, this copy goes.
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(directory, True))
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

    async def _receive(self, body: AsyncIterable[bytes], path: Path) -> None:
        size = 0
        async with await anyio.open_file(path, "wb") as file:
            async for chunk in body:
                size += len(chunk)
                if size > self.max_bytes:
                    raise TooLarge(f"the video is over the limit of {self.max_bytes} bytes")
                await file.write(chunk)

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
