"""An in-process `JobContext` for driving the import job without a queue, and a stand-in
for the `faster_whisper` package (not installed here, and its models cannot be
downloaded)."""

from __future__ import annotations

import types
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from ondoki.errors import JobCancelled
from ondoki_adapters.media.audio import SAMPLE_RATE


class FakeContext:
    """Records every report; `cancel_after` makes the N-th checkpoint (and every later one)
    raise `JobCancelled`, as a real context does once its job was cancelled. With
    `cancel_in`, checkpoints are counted from when that stage is first reported."""

    def __init__(self, *, cancel_after: int | None = None, cancel_in: str | None = None) -> None:
        self.job_id = "job-1"
        self.owner: str | None = "user-1"
        self.attempt = 1
        self.reports: list[tuple[str, float]] = []
        self.checkpoints = 0
        self.cancel_after = cancel_after
        self.cancel_in = cancel_in
        self._counted = 0

    def report(self, stage: str, progress: float) -> None:
        assert 0.0 <= progress <= 1.0, progress
        self.reports.append((stage, progress))

    def checkpoint(self) -> None:
        self.checkpoints += 1
        if self.cancel_in is None or self.cancel_in in self.stages:
            self._counted += 1
        if self.cancel_after is not None and self._counted >= self.cancel_after:
            raise JobCancelled()

    @property
    def stages(self) -> list[str]:
        """Stages in the order they were first reported."""
        seen: list[str] = []
        for stage, _ in self.reports:
            if stage not in seen:
                seen.append(stage)
        return seen


def nothing(_: float = 0.0) -> None:
    """A progress callback or checkpoint that does nothing."""
    return None


class FakeWhisperModel:
    """`faster_whisper.WhisperModel` as the adapter uses it: hears "hi there" at 0.2-0.6 s
    of every window it is given, and records each call (window length, options)."""

    calls: ClassVar[list[tuple[float, dict[str, Any]]]] = []

    def __init__(self, path: str, **options: Any) -> None:
        self.path, self.options = path, options

    def transcribe(
        self, audio: npt.NDArray[np.float32], **options: Any
    ) -> tuple[list[Any], object]:
        assert audio.dtype == np.float32 and np.abs(audio).max() <= 1.0
        seconds = len(audio) / SAMPLE_RATE
        self.calls.append((seconds, options))
        word = types.SimpleNamespace(start=0.25, end=0.5, word=" hi")
        piece = types.SimpleNamespace(start=0.2, end=0.6, text=" hi there ", words=[word])
        return [piece], object()


def fake_faster_whisper() -> types.ModuleType:
    """A `faster_whisper` module whose `WhisperModel` is `FakeWhisperModel`; put it in
    `sys.modules` (with monkeypatch) before the adapter loads its model."""
    module = types.ModuleType("faster_whisper")
    module.__dict__["WhisperModel"] = FakeWhisperModel
    return module
