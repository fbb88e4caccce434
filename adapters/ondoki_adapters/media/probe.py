"""Opening uploads safely with PyAV (FFmpeg) and telling, cheaply, whether they are videos
ondoki can import: the `VideoProbe` port, and the stream helpers the other PyAV adapters
share."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import av
import av.codec.context
import av.container
import av.stream
import av.subtitles.stream

from ondoki.errors import InvalidInput, UnsupportedMedia
from ondoki.ports.media import MediaLimits, VideoInfo

#: Demuxers an upload may be read with. Anything else (HLS and other playlists, image
#: sequences, concat lists, raw devices) is refused before FFmpeg opens it: a playlist
#: uploaded as a "video" would otherwise make FFmpeg read other files or URLs for us.
DEMUXERS = ("mov", "matroska", "webm", "avi", "flv", "mpegts", "gif", "ogg", "asf", "mpeg")
_OPEN_OPTIONS = {"format_whitelist": ",".join(DEMUXERS), "protocol_whitelist": "file"}
# Subtitle codecs that carry text (bitmap subtitles would need OCR).
TEXT_SUBTITLES = frozenset({"mov_text", "subrip", "srt", "webvtt", "ass", "ssa", "text"})
# Pictures attached to a file (album art, thumbnails) are video streams too, not videos.
_COVER_ART = av.stream.Disposition.attached_pic
# How much of the stream `probe` reads looking for the first picture and for the end.
_FIRST_FRAME_PACKETS = 600
_TAIL_PACKETS = 4_000
_TAIL_SECONDS = 3.0


T = TypeVar("T")

# Corrupt packets FFmpeg reports but conceals are tolerated up to this many, and this share.
_MAX_BAD_PACKETS = 10
_MAX_BAD_SHARE = 0.05


class PacketDecoder:
    """Decodes one stream's packets, tolerating a few corrupt ones (FFmpeg conceals them)
    and refusing the file with `UnsupportedMedia` once too many are; `what` names the
    stream in that message ("video data", "audio track")."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.packets = 0
        self.bad = 0

    def frames(self, decode: Callable[[], list[T]]) -> list[T]:
        """What `decode` (a packet's bound `decode`) returns; none for a tolerated corrupt
        packet."""
        self.packets += 1
        try:
            return decode()
        except av.error.InvalidDataError:
            self.bad += 1
            if self.bad > _MAX_BAD_PACKETS and self.bad > _MAX_BAD_SHARE * self.packets:
                raise UnsupportedMedia(
                    f"the {self.what} is damaged: {self.bad} of the first {self.packets} "
                    "packets cannot be decoded"
                ) from None
            return []


@contextmanager
def open_video(path: str | os.PathLike[str]) -> Iterator[av.container.InputContainer]:
    """Open `path` for reading with FFmpeg, restricted to the demuxers in `DEMUXERS` and to
    local files; errors opening it become `UnsupportedMedia` (or `InvalidInput` when the
    file is missing)."""
    path = Path(path)
    try:
        container = av.open(str(path), options=_OPEN_OPTIONS, metadata_errors="replace")
    except FileNotFoundError:
        raise InvalidInput(f"the video file {path.name!r} does not exist") from None
    except av.error.ArgumentError:
        # format_whitelist refuses other demuxers with EINVAL.
        raise UnsupportedMedia(
            "not a video in a supported container (mp4, mov, mkv, webm, avi, ...)"
        ) from None
    except av.FFmpegError as exc:
        raise UnsupportedMedia(f"not a readable video ({describe(exc)})") from None
    except OSError as exc:
        raise InvalidInput(f"the video file {path.name!r} cannot be read: {exc.strerror}") from None
    try:
        yield container
    finally:
        container.close()


def probe(path: str | os.PathLike[str], *, limits: MediaLimits | None = None) -> VideoInfo:
    """Tell what the video at `path` is, or raise `UnsupportedMedia` saying why it cannot be
    imported: not a video container, no video stream (e.g. audio only), no decodable
    picture, truncated (the data stops well before the duration the container declares),
    or a resolution or duration over `limits`.

    Cheap enough for an upload check: it reads the headers, decodes the first picture and
    looks at the last few seconds of packets; it never decodes the whole file.
    """
    limits = limits or MediaLimits()
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InvalidInput(f"the video file {path.name!r} does not exist") from None
    if size == 0:
        raise UnsupportedMedia("the file is empty")
    with open_video(path) as container:
        info = describe_container(container, size)
        limits.check_picture(info.width, info.height)
        if info.duration is not None:
            limits.check_duration(info.duration)
        try:
            _first_picture(container)
            _check_tail(container, info)
        except av.FFmpegError as exc:
            raise UnsupportedMedia(f"the video data is damaged ({describe(exc)})") from None
    return info


def video_stream(container: av.container.InputContainer) -> av.VideoStream:
    """The video a guide is made of: the first decodable video stream that is not cover
    art. Raises `UnsupportedMedia` when there is none."""
    streams = [s for s in container.streams.video if not s.disposition & _COVER_ART]
    if not streams:
        kinds = sorted({s.type for s in container.streams if s.type != "video"})
        has = f" (it has {' and '.join(kinds)} only)" if kinds else ""
        raise UnsupportedMedia(f"the file has no video stream{has}")
    for stream in streams:
        if _decodable(stream):
            return stream
    raise UnsupportedMedia("the video is in a codec ondoki cannot decode")


def audio_stream(container: av.container.InputContainer) -> av.AudioStream | None:
    """The narration track: the first decodable audio stream, if any."""
    return next((s for s in container.streams.audio if _decodable(s)), None)


def text_subtitle_streams(
    container: av.container.InputContainer,
) -> list[av.subtitles.stream.SubtitleStream]:
    """The subtitle streams whose cues are text ondoki reads (`TEXT_SUBTITLES`)."""
    return [
        s
        for s in container.streams.subtitles
        if s.codec_context is not None and s.codec_context.name in TEXT_SUBTITLES
    ]


def _decodable(stream: av.stream.Stream) -> bool:
    # PyAV gives streams of codecs FFmpeg cannot decode no codec context.
    context: av.codec.context.CodecContext | None = stream.codec_context
    return context is not None and bool(context.name)


def describe_container(container: av.container.InputContainer, size: int = 0) -> VideoInfo:
    """The `VideoInfo` of an open container, from its headers alone."""
    video = video_stream(container)
    context = video.codec_context
    rate = video.average_rate or video.guessed_rate
    audio = audio_stream(container)
    return VideoInfo(
        container=container.format.name,
        duration=_duration(container),
        start_time=_seconds(container.start_time) or 0.0,
        width=context.width,
        height=context.height,
        fps=float(rate) if rate else None,
        video_codec=context.name,
        has_audio=audio is not None,
        audio_codec=audio.codec_context.name if audio is not None else None,
        subtitle_codecs=tuple(s.codec_context.name for s in text_subtitle_streams(container)),
        size_bytes=size,
    )


def describe(exc: BaseException) -> str:
    """A short, path-free description of an FFmpeg error."""
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return str(exc.strerror).lower()
    return type(exc).__name__


def _duration(container: av.container.InputContainer) -> float | None:
    seconds = _seconds(container.duration)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


def _seconds(microseconds: int | None) -> float | None:
    return None if microseconds is None else microseconds / av.time_base


def _first_picture(container: av.container.InputContainer) -> None:
    video = video_stream(container)
    for count, packet in enumerate(container.demux(video)):
        if count >= _FIRST_FRAME_PACKETS:
            break
        try:
            if packet.decode():
                return
        except av.error.InvalidDataError:
            continue  # a damaged packet before the first keyframe; try the next
    raise UnsupportedMedia("the video stream has no decodable picture")


def _check_tail(container: av.container.InputContainer, info: VideoInfo) -> None:
    """Raise when the packets stop well before the declared duration: a truncated upload.

    The index of an MP4 (or the header of an MKV) still promises the whole duration; the
    packets near the end are simply not there."""
    if info.duration is None or info.duration < 2 * _TAIL_SECONDS:
        return
    target = info.start_time + info.duration - _TAIL_SECONDS
    try:
        container.seek(int(target * av.time_base), backward=True)
    except av.FFmpegError:
        return  # not seekable: the import finds out while decoding
    end = 0.0
    for count, packet in enumerate(container.demux()):
        if count >= _TAIL_PACKETS:
            return  # plenty of data near the end
        end = max(end, packet_end(packet, info.start_time))
    info.check_complete(end)


def packet_end(packet: av.Packet[Any], origin: float) -> float:
    """When `packet`'s data ends, in seconds after `origin` (0.0 when it has no timing)."""
    if packet.pts is None or packet.time_base is None:
        return 0.0
    return float((packet.pts + (packet.duration or 0)) * packet.time_base) - origin
