"""Captions: SubRip and WebVTT files beside the video, text subtitle streams inside it,
and CaptionsFirst preferring them to speech."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ondoki.domain.media import CaptionsFirst
from ondoki.domain.media.captions import (
    parse_captions,
    read_captions,
    sidecar_captions,
)
from ondoki.ports.media import Segment
from ondoki_adapters.media.subtitles import container_captions
from tests.media.fakes import nothing
from tests.media.generate import Scene, Truth, write_srt, write_video
from tests.media.wiring import DECODER


def test_parses_srt() -> None:
    cues = parse_captions(
        "\ufeff1\r\n00:00:01,500 --> 00:00:03,000\r\nOpen the <i>Settings</i>\r\nmenu\r\n\r\n"
        "2\r\n01:02:03,004 --> 01:02:04,000\r\n{\\an8}Done &amp; dusted\r\n"
    )
    assert cues == [
        Segment(start=1.5, end=3.0, text="Open the Settings menu", source="captions"),
        Segment(start=3723.004, end=3724.0, text="Done & dusted", source="captions"),
    ]


def test_parses_webvtt() -> None:
    cues = parse_captions(
        "WEBVTT - a header\n\nNOTE this is not a cue\n\nSTYLE\n::cue { color: red }\n\n"
        "intro\n00:01.000 --> 00:02.500 align:start position:10%\n<v Ann>Hello <b>there</b>\n\n"
        "00:00:03.000 --> 00:00:04.000\n<c.yellow>second</c>\n\n"
        "broken block without timing\n"
    )
    assert [(c.start, c.end, c.text) for c in cues] == [
        (1.0, 2.5, "Hello there"),
        (3.0, 4.0, "second"),
    ]


def test_finds_sidecar_captions(tmp_path: Path) -> None:
    video = tmp_path / "recording.mp4"
    assert sidecar_captions(video) is None
    (tmp_path / "recording.mp4.vtt").write_text("WEBVTT\n")
    assert sidecar_captions(video) == tmp_path / "recording.mp4.vtt"
    (tmp_path / "recording.srt").write_text("")
    assert sidecar_captions(video) == tmp_path / "recording.srt"


def test_reads_captions_from_the_container(captioned_video: Truth) -> None:
    cues = container_captions(captioned_video.path)
    assert cues is not None
    assert [c.text for c in cues] == ["Open the Settings menu", "Pick a theme", "Save & close"]
    starts = [b + 0.3 for b in captioned_video.boundaries[:-1]]
    assert [c.start for c in cues] == pytest.approx(starts, abs=0.01)
    assert [c.end - c.start for c in cues] == pytest.approx([2.0] * 3, abs=0.01)


def test_reads_subrip_from_mkv(tmp_path: Path) -> None:
    truth = write_video(
        tmp_path / "a.mkv", [Scene(1.5), Scene(1.5, caption="second")], subtitles=True
    )
    cues = container_captions(truth.path)
    assert cues is not None
    assert [c.text for c in cues] == ["second"]
    assert cues[0].start == pytest.approx(1.8, abs=0.01)


def test_no_captions_is_none(silent_video: Truth) -> None:
    assert container_captions(silent_video.path) is None
    assert read_captions(silent_video.path, DECODER) is None


def test_captions_win_over_speech(captioned_video: Truth) -> None:
    class Refuses:
        name = "refuses"

        def transcribe(self, path: Path, **_: Any) -> list[Segment]:
            raise AssertionError("speech recognition must not run when there are captions")

    segments = CaptionsFirst(Refuses(), subtitles=DECODER).transcribe(
        captioned_video.path, on_progress=nothing, checkpoint=nothing
    )
    assert [s.source for s in segments] == ["captions"] * 3


def test_a_sidecar_wins_over_the_container(tmp_path: Path, captioned_video: Truth) -> None:
    video = tmp_path / "v.mp4"
    video.symlink_to(captioned_video.path)
    write_srt(tmp_path / "v.srt", [(0.5, 1.0, "from the sidecar")])
    segments = CaptionsFirst(subtitles=DECODER).transcribe(
        video, on_progress=nothing, checkpoint=nothing
    )
    assert [s.text for s in segments] == ["from the sidecar"]


def test_an_empty_caption_file_does_not_silence_the_speech(
    tmp_path: Path, narrated_or_tones: Truth
) -> None:
    video = tmp_path / "v.mp4"
    video.symlink_to(narrated_or_tones.path)
    (tmp_path / "v.vtt").write_text("WEBVTT\n\nnot a cue\n")

    class Speech:
        name = "speech"

        def transcribe(self, path: Path, **_: Any) -> list[Segment]:
            return [Segment(start=0.3, end=1.0, text="heard")]

    segments = CaptionsFirst(Speech(), subtitles=DECODER).transcribe(
        video, on_progress=nothing, checkpoint=nothing
    )
    assert [s.text for s in segments] == ["heard"]
