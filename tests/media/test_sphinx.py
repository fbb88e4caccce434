"""PocketsphinxTranscriber on speech made by espeak-ng at known times."""

from __future__ import annotations

from pathlib import Path

import pytest

from ondoki.errors import ConfigError, JobCancelled
from ondoki.ports.media import Segment
from ondoki_adapters.media import PocketsphinxTranscriber
from tests.media.conftest import SPOKEN
from tests.media.fakes import nothing
from tests.media.generate import Truth


def spoken_segments(truth: Truth, segments: list[Segment]) -> list[list[Segment]]:
    """The segments overlapping each spoken phrase."""
    return [
        [s for s in segments if s.end > start and s.start < end] for start, end, _ in truth.speech
    ]


def test_pocketsphinx_times_speech_within_its_scene(narrated_video: Truth) -> None:
    progress: list[float] = []
    segments = PocketsphinxTranscriber().transcribe(
        narrated_video.path, on_progress=progress.append, checkpoint=nothing
    )
    assert progress[-1] == 1.0 and progress == sorted(progress)
    assert segments == sorted(segments, key=lambda s: s.start)
    per_phrase = spoken_segments(narrated_video, segments)
    for (start, end, scene), found in zip(narrated_video.speech, per_phrase, strict=True):
        assert found, f"nothing heard between {start:.2f} and {end:.2f}"
        # Word timings are within a few hundredths of where the speech really is.
        assert found[0].start == pytest.approx(start, abs=0.25)
        assert found[-1].end == pytest.approx(end, abs=0.25)
        for segment in found:
            for word in segment.words:
                assert narrated_video.scene_at((word.start + word.end) / 2) == scene
    # Nothing was "heard" where nobody spoke.
    assert sum(len(f) for f in per_phrase) == len(segments)


def test_pocketsphinx_recognises_some_words(narrated_video: Truth) -> None:
    segments = PocketsphinxTranscriber().transcribe(
        narrated_video.path, on_progress=nothing, checkpoint=nothing
    )
    heard = [
        {w.text for s in found for w in s.words}
        for found in spoken_segments(narrated_video, segments)
    ]
    # espeak-ng's voice is hard for pocketsphinx; these phrases come out nearly right.
    matches = [
        bool(heard_words & expected)
        for heard_words, expected in zip(heard, SPOKEN.values(), strict=True)
    ]
    assert sum(matches) >= 2, heard


def test_pocketsphinx_cuts_long_utterances(narrated_video: Truth) -> None:
    segments = PocketsphinxTranscriber(max_utterance=0.5).transcribe(
        narrated_video.path, on_progress=nothing, checkpoint=nothing
    )
    assert all(s.end - s.start <= 0.75 for s in segments)
    for start, end, _ in narrated_video.speech:
        assert any(start - 0.25 < s.start < end for s in segments)


def test_pocketsphinx_stops_at_a_checkpoint(narrated_or_tones: Truth) -> None:
    calls = 0

    def checkpoint() -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise JobCancelled()

    with pytest.raises(JobCancelled):
        PocketsphinxTranscriber().transcribe(
            narrated_or_tones.path, on_progress=nothing, checkpoint=checkpoint
        )
    assert calls == 5


def test_pocketsphinx_checks_its_model_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        PocketsphinxTranscriber(model=tmp_path / "nope")
