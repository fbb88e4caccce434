"""The media ports' contracts (`ondoki.ports.media`), run against every adapter.

A new transcriber or decoder joins the suite by being added to `TRANSCRIBERS` or
`DECODERS`; the per-adapter test modules beside this one check what only that adapter does
(recognition quality, scene detection accuracy, caption formats).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ondoki.domain.media import CaptionsFirst
from ondoki.errors import InvalidInput, JobCancelled, UnsupportedMedia
from ondoki.ports.media import MediaDecoder, MediaLimits, Segment, Transcriber
from ondoki_adapters.media import PocketsphinxTranscriber, PyAVDecoder, WhisperTranscriber
from tests.media.fakes import fake_faster_whisper, nothing
from tests.media.generate import Truth, write_audio_only

# -- transcribers ----------------------------------------------------------------------------


def whisper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Transcriber:
    # The package and its models are not installed here: a stand-in model, so this checks
    # the adapter's side of the contract (ordering, progress, checkpoints, silence).
    monkeypatch.setitem(sys.modules, "faster_whisper", fake_faster_whisper())
    (tmp_path / "model.bin").write_bytes(b"")
    return WhisperTranscriber(tmp_path, chunk_seconds=2.5)


TRANSCRIBERS: dict[str, Callable[[Path, pytest.MonkeyPatch], Transcriber]] = {
    "pocketsphinx": lambda _, __: PocketsphinxTranscriber(),
    "faster-whisper": whisper,
    "captions-first": lambda _, __: CaptionsFirst(
        PocketsphinxTranscriber(), subtitles=PyAVDecoder()
    ),
    "captions-only": lambda _, __: CaptionsFirst(subtitles=PyAVDecoder()),
}


@pytest.fixture(params=list(TRANSCRIBERS))
def transcriber(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Transcriber:
    return TRANSCRIBERS[request.param](tmp_path, monkeypatch)


def test_a_transcriber_has_a_name(transcriber: Transcriber) -> None:
    assert isinstance(transcriber.name, str) and transcriber.name


def test_no_audio_track_is_no_narration(transcriber: Transcriber, silent_video: Truth) -> None:
    progress: list[float] = []
    segments = transcriber.transcribe(
        silent_video.path, on_progress=progress.append, checkpoint=nothing
    )
    assert segments == []
    assert progress[-1] == 1.0


def test_segments_are_in_time_order_within_the_file(
    transcriber: Transcriber, narrated_or_tones: Truth
) -> None:
    progress: list[float] = []
    segments = transcriber.transcribe(
        narrated_or_tones.path, on_progress=progress.append, checkpoint=nothing
    )
    assert all(isinstance(s, Segment) for s in segments)
    assert segments == sorted(segments, key=lambda s: s.start)
    for segment in segments:
        assert 0.0 <= segment.start <= segment.end <= narrated_or_tones.duration + 0.1
        assert segment.text and segment.source in ("speech", "captions")
        for word in segment.words:
            assert segment.start <= word.start <= word.end <= segment.end
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert all(0.0 <= p <= 1.0 for p in progress)


def test_a_raising_checkpoint_stops_the_work(
    transcriber: Transcriber, captioned_video: Truth
) -> None:
    # Captions and an audio track: there is work for every kind of transcriber.
    def cancel() -> None:
        raise JobCancelled()

    with pytest.raises(JobCancelled):
        transcriber.transcribe(captioned_video.path, on_progress=nothing, checkpoint=cancel)


# -- decoders --------------------------------------------------------------------------------

DECODERS: dict[str, Callable[[], MediaDecoder]] = {"pyav": PyAVDecoder}


@pytest.fixture(params=list(DECODERS))
def decoder(request: pytest.FixtureRequest) -> MediaDecoder:
    return DECODERS[request.param]()


def test_probe_describes_a_video(decoder: MediaDecoder, captioned_video: Truth) -> None:
    info = decoder.probe(captioned_video.path, limits=MediaLimits())
    assert (info.width, info.height) == (captioned_video.width, captioned_video.height)
    assert info.duration == pytest.approx(captioned_video.duration, abs=0.1)
    assert info.has_audio and info.subtitle_codecs
    assert info.size_bytes == captioned_video.path.stat().st_size


def test_probe_refuses_what_cannot_be_imported(decoder: MediaDecoder, tmp_path: Path) -> None:
    write_audio_only(tmp_path / "audio.m4a")
    with pytest.raises(UnsupportedMedia, match="no video stream"):
        decoder.probe(tmp_path / "audio.m4a", limits=MediaLimits())
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(UnsupportedMedia):
        decoder.probe(tmp_path / "notes.mp4", limits=MediaLimits())
    with pytest.raises(InvalidInput):
        decoder.probe(tmp_path / "missing.mp4", limits=MediaLimits())


def test_probe_applies_the_limits(decoder: MediaDecoder, silent_video: Truth) -> None:
    with pytest.raises(UnsupportedMedia, match="over the limit"):
        decoder.probe(silent_video.path, limits=MediaLimits(max_duration=5.0))
    with pytest.raises(UnsupportedMedia, match="over the limit"):
        decoder.probe(silent_video.path, limits=MediaLimits(max_width=100))


def test_steps_cover_the_video_and_each_has_its_picture(
    decoder: MediaDecoder, tmp_path: Path, silent_video: Truth
) -> None:
    info = decoder.probe(silent_video.path, limits=MediaLimits())
    progress: list[float] = []
    extraction = decoder.extract_steps(
        silent_video.path,
        tmp_path / "frames",
        info=info,
        limits=MediaLimits(),
        on_progress=progress.append,
        checkpoint=nothing,
    )
    steps = extraction.steps
    assert [s.index for s in steps] == list(range(1, len(steps) + 1))
    assert steps[0].start == 0.0
    assert all(a.end == b.start for a, b in itertools.pairwise(steps))
    assert steps[-1].end == pytest.approx(extraction.duration)
    for step in steps:
        assert step.start <= step.frame_time <= step.end
        assert (tmp_path / "frames" / step.frame).is_file()
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_step_extraction_applies_the_limits_and_stops_at_a_checkpoint(
    decoder: MediaDecoder, tmp_path: Path, silent_video: Truth
) -> None:
    info = decoder.probe(silent_video.path, limits=MediaLimits())

    def cancel() -> None:
        raise JobCancelled()

    with pytest.raises(JobCancelled):
        decoder.extract_steps(
            silent_video.path,
            tmp_path / "a",
            info=info,
            limits=MediaLimits(),
            on_progress=nothing,
            checkpoint=cancel,
        )
    with pytest.raises(UnsupportedMedia, match="over the limit"):
        decoder.extract_steps(
            silent_video.path,
            tmp_path / "b",
            info=info,
            limits=MediaLimits(max_duration=5.0),
            on_progress=nothing,
            checkpoint=nothing,
        )


def test_subtitles_are_cues_in_order_or_none(
    decoder: MediaDecoder, captioned_video: Truth, silent_video: Truth
) -> None:
    assert decoder.subtitles(silent_video.path, checkpoint=nothing) is None
    cues = decoder.subtitles(captioned_video.path, checkpoint=nothing)
    assert cues is not None and len(cues) == len(captioned_video.boundaries) - 1
    assert cues == sorted(cues, key=lambda c: c.start)
    assert all(c.source == "captions" and "<" not in c.text for c in cues)
