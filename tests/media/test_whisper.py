"""WhisperTranscriber, against a stand-in `faster_whisper` module: the package and its
models are not installed here (models cannot be downloaded), so this checks the adapter's
plumbing (windows, time offsets, options, errors), not recognition."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pytest

from ondoki.errors import ConfigError
from ondoki_adapters.media import WhisperTranscriber
from ondoki_adapters.media.audio import SAMPLE_RATE
from tests.media.fakes import nothing
from tests.media.generate import Truth


class FakeWhisperModel:
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


def test_whisper_adapter_feeds_windows_and_offsets_times(
    tmp_path: Path, narrated_or_tones: Truth, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("faster_whisper")
    module.__dict__["WhisperModel"] = FakeWhisperModel
    monkeypatch.setitem(sys.modules, "faster_whisper", module)
    FakeWhisperModel.calls = []
    (tmp_path / "model.bin").write_bytes(b"")
    transcriber = WhisperTranscriber(tmp_path, chunk_seconds=2.5, language="en")
    segments = transcriber.transcribe(
        narrated_or_tones.path, on_progress=nothing, checkpoint=nothing
    )
    assert [s.start for s in segments] == [0.2, 2.7, 5.2]
    assert segments[1].words[0].start == 2.75
    assert {s.text for s in segments} == {"hi there"}
    assert [round(seconds, 1) for seconds, _ in FakeWhisperModel.calls] == [2.5, 2.5, 1.0]
    assert FakeWhisperModel.calls[0][1]["word_timestamps"] is True
    assert FakeWhisperModel.calls[0][1]["language"] == "en"
    assert transcriber._model.options["local_files_only"] is True


def test_whisper_adapter_needs_a_model_and_the_package(
    tmp_path: Path, narrated_or_tones: Truth, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="not a faster-whisper model directory"):
        WhisperTranscriber(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # as if not installed
    with pytest.raises(ConfigError, match="faster-whisper is not installed"):
        WhisperTranscriber(tmp_path).transcribe(
            narrated_or_tones.path, on_progress=nothing, checkpoint=nothing
        )
