"""probe: what an upload is, and every way it can be refused, quickly and with a reason."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from ondoki.errors import InvalidInput, UnsupportedMedia
from ondoki.ports.media import MediaLimits
from ondoki_adapters.media.probe import probe
from tests.media.generate import (
    Scene,
    Truth,
    damage,
    remux,
    truncate,
    write_audio_only,
    write_huge,
    write_video,
)


def test_describes_a_good_video(silent_video: Truth, captioned_video: Truth) -> None:
    info = probe(silent_video.path)
    assert (info.width, info.height) == (320, 240)
    assert info.duration == pytest.approx(silent_video.duration, abs=0.1)
    assert info.fps == pytest.approx(15)
    assert info.video_codec == "h264"
    assert not info.has_audio
    assert info.size_bytes == silent_video.path.stat().st_size
    info = probe(captioned_video.path)
    assert info.has_audio and info.audio_codec == "aac"
    assert info.subtitle_codecs == ("mov_text",)


def test_reads_webm_and_mkv(tmp_path: Path) -> None:
    webm = write_video(tmp_path / "a.webm", [Scene(1.0), Scene(1.0)], codec="libvpx")
    assert probe(webm.path).video_codec == "vp8"
    mkv = write_video(tmp_path / "a.mkv", [Scene(1.0)], audio=True, tones=True)
    assert probe(mkv.path).has_audio


def refused(path: Path, *, limits: MediaLimits | None = None) -> str:
    start = time.monotonic()
    with pytest.raises(UnsupportedMedia) as caught:
        probe(path, limits=limits)
    assert time.monotonic() - start < 5, "probe must be quick, whatever the input"
    assert caught.value.code == "unsupported_media_type"
    assert str(caught.value).startswith("unsupported video: ")
    return caught.value.reason


def test_refuses_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert refused(tmp_path / "empty.mp4") == "the file is empty"


def test_refuses_random_bytes_and_text(tmp_path: Path) -> None:
    for seed in range(20):
        # FFmpeg finds no format in noise, or a format (like raw MP3) that is not a video.
        (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(seed).bytes(100_000))
        reason = refused(tmp_path / "noise.mp4")
        assert "not a readable video" in reason or "not a video in a supported" in reason
    (tmp_path / "notes.mp4").write_text("these are not the frames you are looking for\n" * 50)
    assert "not a readable video" in refused(tmp_path / "notes.mp4")


def test_refuses_an_audio_only_file(tmp_path: Path) -> None:
    write_audio_only(tmp_path / "voice.m4a")
    assert refused(tmp_path / "voice.m4a") == "the file has no video stream (it has audio only)"


def test_refuses_a_truncated_mp4_with_its_index_at_the_end(
    tmp_path: Path, silent_video: Truth
) -> None:
    truncate(silent_video.path, tmp_path / "cut.mp4")
    assert "not a readable video" in refused(tmp_path / "cut.mp4")


def test_refuses_a_truncated_mp4_with_its_index_at_the_front(
    tmp_path: Path, narrated_or_tones: Truth
) -> None:
    # The index still promises every sample, so it opens: the missing end must be noticed.
    remux(narrated_or_tones.path, tmp_path / "fast.mp4", faststart=True)
    probe(tmp_path / "fast.mp4")  # whole, it is fine
    truncate(tmp_path / "fast.mp4", tmp_path / "cut.mp4", keep=0.6)
    assert "truncated" in refused(tmp_path / "cut.mp4")


def test_refuses_a_truncated_mkv(tmp_path: Path) -> None:
    mkv = write_video(tmp_path / "a.mkv", [Scene(4.0), Scene(4.0)], audio=True, tones=True)
    truncate(mkv.path, tmp_path / "cut.mkv", keep=0.5)
    assert "truncated" in refused(tmp_path / "cut.mkv")


def test_refuses_a_file_whose_start_is_damaged(tmp_path: Path, silent_video: Truth) -> None:
    remux(silent_video.path, tmp_path / "fast.mp4", faststart=True)
    damage(tmp_path / "fast.mp4", tmp_path / "bad.mp4", 0.1, 0.3)
    reason = refused(tmp_path / "bad.mp4")
    assert "picture" in reason or "damaged" in reason


def test_refuses_a_still_image(tmp_path: Path, silent_video: Truth) -> None:
    # An image (or a playlist, or an image sequence) is not a container we read.
    import av

    with av.open(str(silent_video.path)) as container:
        next(container.decode(video=0)).save(tmp_path / "shot.png")
    assert "supported container" in refused(tmp_path / "shot.png")


def test_refuses_a_playlist_without_reading_what_it_points_at(
    tmp_path: Path, silent_video: Truth
) -> None:
    playlist = tmp_path / "list.m3u8"
    playlist.write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{silent_video.path}\n#EXT-X-ENDLIST\n"
    )
    assert "supported container" in refused(playlist)


def test_refuses_an_absurd_resolution_from_the_header(tmp_path: Path) -> None:
    write_huge(tmp_path / "huge.mkv", 8000, 8000)
    start = time.monotonic()
    assert refused(tmp_path / "huge.mkv") == (
        "the resolution 8000x8000 is over the limit of 7680x4320 (40,000,000 pixels)"
    )
    assert time.monotonic() - start < 1, "refused before decoding a 64-megapixel picture"


def test_refuses_resolution_and_duration_over_the_limits(silent_video: Truth) -> None:
    assert "resolution 320x240 is over the limit" in refused(
        silent_video.path, limits=MediaLimits(max_width=300)
    )
    assert "over the limit" in refused(silent_video.path, limits=MediaLimits(max_pixels=70_000))
    assert refused(silent_video.path, limits=MediaLimits(max_duration=5.0)) == (
        "the video lasts 0:10, over the limit of 0:05"
    )


def test_default_limits_are_generous_but_finite() -> None:
    limits = MediaLimits()
    limits.check_picture(7680, 4320)
    with pytest.raises(UnsupportedMedia):
        limits.check_picture(8000, 8000)
    with pytest.raises(UnsupportedMedia):
        limits.check_picture(0, 240)
    limits.check_duration(4 * 3600)
    with pytest.raises(UnsupportedMedia):
        limits.check_duration(4 * 3600 + 1)


def test_a_missing_file_is_invalid_input_without_the_full_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        probe(tmp_path / "gone.mp4")
    assert not isinstance(caught.value, UnsupportedMedia)
    assert str(tmp_path) not in str(caught.value)
