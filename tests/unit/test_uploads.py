"""Upload bounds in the imports domain, on the memory adapters with a queue that runs
nothing (so imports stay unfinished): unfinished imports per user, concurrent uploads,
the free-space floor, a stalled body, and the files an import leaves behind."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from ondoki.domain.imports import Imports
from ondoki.domain.jobs import JobKinds
from ondoki.domain.media import KIND, QUEUE
from ondoki.domain.uploads import PARTIAL, SOURCE, ImportFiles, UploadLimits
from ondoki.errors import BodyTimeout, InsufficientStorage, TooManyRequests
from ondoki.models import JobRecord
from ondoki_adapters.media.decoder import PyAVDecoder
from ondoki_adapters.memory.cache import MemoryCache
from ondoki_adapters.memory.jobs import MemoryJobQueue
from tests.media.generate import Scene, write_video

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("videos") / "one-step.mp4"
    write_video(path, [Scene(1.0)])
    return path.read_bytes()


def noop(ctx: object, payload: object) -> None:
    return None


@asynccontextmanager
async def make_imports(
    tmp_path: Path, *, cleanup: bool = False, **limits: float
) -> AsyncIterator[Imports]:
    kinds = JobKinds()
    kinds.register(KIND, noop, queue=QUEUE)
    files = ImportFiles(tmp_path / "media", UploadLimits())
    # Not run: every import stays queued. `cleanup` wires it as the composition root does.
    jobs = MemoryJobQueue(kinds, notify=files.job_changed if cleanup else None)
    try:
        yield Imports(
            jobs,
            MemoryCache(),
            tmp_path / "media",
            max_bytes=10_000_000,
            key_ttl=3600,
            probe=PyAVDecoder(),
            uploads=UploadLimits(**limits),  # type: ignore[arg-type]
        )
    finally:
        await jobs.aclose()


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def stalled(first: bytes) -> AsyncIterator[bytes]:
    yield first
    await anyio.sleep(60)
    yield b""


def directories(imports: Imports) -> list[Path]:
    return sorted(imports.root.iterdir()) if imports.root.exists() else []


async def test_a_user_has_a_bounded_number_of_unfinished_imports(
    tmp_path: Path, video: bytes
) -> None:
    async with make_imports(tmp_path, max_active_imports_per_user=2) as imports:
        first = await imports.upload("alice", chunks(video))
        await imports.upload("alice", chunks(video))
        with pytest.raises(TooManyRequests, match="limit is 2") as caught:
            await imports.upload("alice", chunks(video))
        assert caught.value.retry_after > 0
        assert len(directories(imports)) == 2  # the refused one wrote nothing
        await imports.upload("bob", chunks(video))  # others are not held up
        await imports.jobs.cancel(first)  # a finished import frees its place
        await imports.upload("alice", chunks(video))


async def test_concurrent_uploads_are_bounded_per_user_and_in_all(tmp_path: Path) -> None:
    async with make_imports(tmp_path, max_concurrent=3, max_concurrent_per_user=2) as imports:
        refusals: list[str] = []

        async def hold(user: str, release: anyio.Event, reading: anyio.Event) -> None:
            async def body() -> AsyncIterator[bytes]:
                reading.set()  # past the gate: its slot is taken
                yield b"\0" * 10
                await release.wait()

            try:
                await imports.upload(user, body())
            except TooManyRequests as exc:
                refusals.append(f"{user}: {exc}")
            except Exception:  # the held bodies are not videos: refused once released
                pass

        release = anyio.Event()
        async with anyio.create_task_group() as tasks:
            for user in ("alice", "alice", "bob"):
                reading = anyio.Event()
                tasks.start_soon(hold, user, release, reading)
                await reading.wait()
            assert imports.gate.in_progress == 3
            await hold("alice", release, anyio.Event())  # a third for alice
            await hold("carol", release, anyio.Event())  # a fourth on this instance
            release.set()
        assert [r.split(":")[0] for r in refusals] == ["alice", "carol"]
        assert "2 uploads in progress" in refusals[0]
        assert "as many uploads as it can" in refusals[1]
        assert imports.gate.in_progress == 0
        assert directories(imports) == []


async def test_the_free_space_floor_refuses_before_reading(tmp_path: Path, video: bytes) -> None:
    async with make_imports(tmp_path, min_free_bytes=2**62) as imports:
        read: list[bytes] = []

        async def body() -> AsyncIterator[bytes]:
            read.append(video)
            yield video

        with pytest.raises(InsufficientStorage):
            await imports.upload("alice", body())
        assert read == [] and directories(imports) == []


async def test_a_stalled_body_is_given_up_and_nothing_kept(tmp_path: Path) -> None:
    async with make_imports(tmp_path, idle_timeout=0.3) as imports:
        started = anyio.current_time()
        with pytest.raises(BodyTimeout, match=r"0\.3 s"):
            await imports.upload("alice", stalled(b"\0" * 100))
        assert anyio.current_time() - started < 5
        assert directories(imports) == []
        assert imports.gate.in_progress == 0


async def test_a_finished_import_loses_its_video_and_keeps_its_guide(
    tmp_path: Path, video: bytes
) -> None:
    async with make_imports(tmp_path) as imports:
        job_id = await imports.upload("alice", chunks(video))
        [directory] = directories(imports)
        assert (directory / SOURCE).exists()
        (directory / "guide").mkdir()
        record = await imports.jobs.get(job_id)
        for state, kept in (("dead", True), ("succeeded", False)):
            final = JobRecord(
                id=record.id,
                kind=record.kind,
                queue=record.queue,
                state=state,  # type: ignore[arg-type]
                created_at=record.created_at,
                updated_at=time.time(),
            )
            await imports.files.job_changed(final)
            # A dead import keeps its video: it may be retried.
            assert (directory / SOURCE).exists() is kept
        assert (directory / "guide").exists()


async def test_cancelling_an_import_drops_its_video(tmp_path: Path, video: bytes) -> None:
    async with make_imports(tmp_path, cleanup=True) as imports:
        job_id = await imports.upload("alice", chunks(video))
        [directory] = directories(imports)
        await imports.jobs.cancel(job_id)
        assert not (directory / SOURCE).exists()


async def test_sweep_removes_abandoned_partial_uploads_and_old_imports(tmp_path: Path) -> None:
    files = ImportFiles(tmp_path / "media", UploadLimits(idle_timeout=10, retention=3600))
    files.root.mkdir(parents=True)

    def make(name: str, partial: bool, age: float) -> Path:
        directory = files.root / name
        directory.mkdir()
        target = directory / (PARTIAL if partial else SOURCE)
        target.write_bytes(b"x")
        then = time.time() - age
        os.utime(target, (then, then))
        os.utime(directory, (then, then))
        return directory

    abandoned = make("abandoned", True, 60)  # a killed process's upload
    receiving = make("receiving", True, 1)  # someone is writing it now
    done = make("done", False, 60)
    expired = make("expired", False, 7200)
    assert await files.sweep() == 2
    assert sorted(p.name for p in files.root.iterdir()) == sorted([receiving.name, done.name])
    assert not abandoned.exists() and not expired.exists()
