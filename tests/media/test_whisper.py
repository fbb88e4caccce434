"""WhisperTranscriber, against a stand-in `faster_whisper` module: the package and its
models are not installed here (models cannot be downloaded), so this checks the adapter's
plumbing (windows, time offsets, options, errors), not recognition."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ondoki.errors import ConfigError
from ondoki_adapters.media import WhisperTranscriber
from tests.media.fakes import FakeWhisperModel, fake_faster_whisper, nothing
from tests.media.generate import Truth


def test_whisper_adapter_feeds_windows_and_offsets_times(
    tmp_path: Path, narrated_or_tones: Truth, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "faster_whisper", fake_faster_whisper())
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
