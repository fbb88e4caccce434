"""The audio transcribers hear: 16 kHz PCM on the video's timeline; no audio, no words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ondoki.domain.media import CaptionsFirst
from ondoki_adapters.media import PocketsphinxTranscriber
from ondoki_adapters.media.audio import SAMPLE_RATE, pcm_chunks
from tests.media.fakes import nothing
from tests.media.generate import Scene, Truth, write_video
from tests.media.wiring import DECODER


def test_no_audio_is_an_empty_transcript(silent_video: Truth) -> None:
    for transcriber in (
        PocketsphinxTranscriber(),
        CaptionsFirst(PocketsphinxTranscriber(), subtitles=DECODER),
    ):
        progress: list[float] = []
        assert (
            transcriber.transcribe(
                silent_video.path, on_progress=progress.append, checkpoint=nothing
            )
            == []
        )
        assert progress == [1.0]


def test_pcm_starts_at_time_zero_and_has_the_video_length(narrated_or_tones: Truth) -> None:
    pcm = b"".join(pcm_chunks(narrated_or_tones.path))
    samples = np.frombuffer(pcm, np.int16)
    assert len(samples) / SAMPLE_RATE == pytest.approx(narrated_or_tones.duration, abs=0.1)
    # The tones are where the generator put them.
    for start, end, _ in narrated_or_tones.speech:
        middle = samples[int((start + 0.1) * SAMPLE_RATE) : int((end - 0.1) * SAMPLE_RATE)]
        assert np.abs(middle).mean() > 1000
    quiet = samples[int(4.3 * SAMPLE_RATE) : int(5.7 * SAMPLE_RATE)]
    assert np.abs(quiet).mean() < 50


def test_audio_that_changes_rate_midway(tmp_path: Path) -> None:
    # Two MPEG-TS recordings joined: the AAC track goes from 22.05 to 44.1 kHz.
    for n, rate in enumerate((22_050, 44_100)):
        write_video(
            tmp_path / f"{n}.ts", [Scene(2.0, say="x")], audio=True, tones=True, audio_rate=rate
        )
    joined = tmp_path / "joined.ts"
    joined.write_bytes((tmp_path / "0.ts").read_bytes() + (tmp_path / "1.ts").read_bytes())
    samples = np.frombuffer(b"".join(pcm_chunks(joined)), np.int16)
    assert len(samples) / SAMPLE_RATE == pytest.approx(4.0, abs=0.2)
