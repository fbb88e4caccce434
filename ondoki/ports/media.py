"""The media ports: what the `media.import` job needs from a video decoder and from a
speech recogniser, and the values they hand back.

- `MediaDecoder` reads uploads. It is three smaller ports, so that a caller asks for no
  more than it uses: `VideoProbe` (is this an importable video? cheap, for the upload
  check), `StepExtractor` (find the steps of a screen recording and write one picture
  each) and `SubtitleReader` (the cues of a text subtitle stream inside the file).
- `Transcriber` turns the narration of a file into timed text.

The adapters live in `ondoki_adapters.media` (PyAV for decoding, pocketsphinx and
faster-whisper for speech); the composition root picks them. Every time is in seconds from
the start of the video's timeline (`VideoInfo.start_time`). Every method is blocking (the
job runs in a worker thread; the upload check runs it in one).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import msgspec

from ondoki.errors import UnsupportedMedia

#: Called with how far the work is, 0 to 1.
Progress = Callable[[float], None]
#: Called between units of work; it may raise (e.g. `JobCancelled`) to stop the work.
Checkpoint = Callable[[], None]


# -- values --------------------------------------------------------------------------------


class Word(msgspec.Struct, frozen=True):
    """One recognised word and when it was spoken."""

    start: float
    end: float
    text: str


class Segment(msgspec.Struct, frozen=True, kw_only=True):
    """A stretch of narration: an utterance or a caption cue.

    `words` carries word timings when the source has them (speech recognisers do, captions
    do not); `source` is "speech" or "captions".
    """

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    source: str = "speech"


class MediaLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What a video may be at most. Beyond these, decoding costs more memory or time than
    one import should take, so the file is refused with `UnsupportedMedia`."""

    max_width: int = 7680
    max_height: int = 4320
    max_pixels: int = 40_000_000
    max_duration: float = 4 * 3600.0

    def check_picture(self, width: int, height: int) -> None:
        """Raise `UnsupportedMedia` for a picture size that is absurd or over the limits."""
        if width <= 0 or height <= 0:
            raise UnsupportedMedia(f"the video has no picture size ({width}x{height})")
        if width > self.max_width or height > self.max_height or width * height > self.max_pixels:
            raise UnsupportedMedia(
                f"the resolution {width}x{height} is over the limit of "
                f"{self.max_width}x{self.max_height} ({self.max_pixels:,} pixels)"
            )

    def check_duration(self, seconds: float) -> None:
        """Raise `UnsupportedMedia` for a video longer than `max_duration`."""
        if seconds > self.max_duration:
            raise UnsupportedMedia(
                f"the video lasts {_clock(seconds)}, over the limit of {_clock(self.max_duration)}"
            )


class VideoInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a `VideoProbe` found. Times are in seconds; `duration` is None when the
    container does not say (common for WebM from browser screen recorders)."""

    container: str
    duration: float | None
    #: When the container's timeline starts; every time ondoki reports is relative to it.
    start_time: float
    width: int
    height: int
    fps: float | None
    video_codec: str
    has_audio: bool
    audio_codec: str | None = None
    subtitle_codecs: tuple[str, ...] = ()
    size_bytes: int = 0

    def check_complete(self, end: float) -> None:
        """Raise `UnsupportedMedia` when data that ends at `end` falls well short of the
        duration the container declares (a truncated upload); nothing when it declares
        none."""
        declared = self.duration
        if declared is not None and end < declared - max(1.0, 0.02 * declared):
            raise UnsupportedMedia(
                f"the file is truncated: its data stops at {_clock(end)} of the "
                f"{_clock(declared)} it declares"
            )


class StepFrame(msgspec.Struct, frozen=True, kw_only=True):
    """One step found in the video: its span, and its picture (taken at `frame_time`)."""

    index: int
    start: float
    end: float
    frame: str
    frame_time: float


class Extraction(msgspec.Struct, frozen=True, kw_only=True):
    """The steps of a video, in time order, and where its pictures end."""

    steps: list[StepFrame]
    duration: float


def _clock(seconds: float) -> str:
    whole = int(seconds)
    h, m, s = whole // 3600, whole // 60 % 60, whole % 60
    return f"{h}:{m:02}:{s:02}" if h else f"{m}:{s:02}"


# -- ports ---------------------------------------------------------------------------------


class VideoProbe(Protocol):
    """Tells, cheaply, whether a file is a video ondoki can import."""

    def probe(self, path: Path, *, limits: MediaLimits) -> VideoInfo:
        """What the video at `path` is.

        Contract: cheap enough for an upload check (headers, the first picture, the last
        seconds; never the whole file). Raises `UnsupportedMedia` saying why the file cannot
        be imported: not a video container, no video stream (e.g. audio only), no decodable
        picture, truncated, or a picture size or duration over `limits`. Raises
        `InvalidInput` when the file is missing or unreadable. Never reads anything but the
        local file (no playlists, no URLs).
        """
        ...


class StepExtractor(Protocol):
    """Finds the steps of a screen recording and keeps one picture of each."""

    def extract_steps(
        self,
        path: Path,
        frames_dir: Path,
        *,
        info: VideoInfo,
        limits: MediaLimits,
        on_progress: Progress,
        checkpoint: Checkpoint,
    ) -> Extraction:
        """Decode the video at `path` (which `probe` described as `info`), find its steps
        and write one JPEG per step into `frames_dir` (created if need be) as
        `step-001.jpg`, `step-002.jpg`, ...

        Contract: steps are in time order, numbered from 1, without gaps, the first
        starting at 0; every `StepFrame.frame` names a file written in `frames_dir`. It
        calls `on_progress(0..1)` as it goes and `checkpoint()` between frames. Memory does
        not grow with the length of the video. Raises `UnsupportedMedia` when the video
        turns out damaged, truncated or over `limits` while decoding, and
        `RetryableJobError` when a picture cannot be written (the disk, not the video).
        """
        ...


class SubtitleReader(Protocol):
    """Reads the captions a video carries inside it."""

    def subtitles(self, path: Path, *, checkpoint: Checkpoint) -> list[Segment] | None:
        """The cues of the first text subtitle stream of `path` (source "captions"), in
        time order, markup removed; None when it has no text subtitle stream (an empty list
        when it has one without text). Calls `checkpoint()` between cues. A damaged stream
        raises `UnsupportedMedia`."""
        ...


class MediaDecoder(VideoProbe, StepExtractor, SubtitleReader, Protocol):
    """Everything the `media.import` job reads from a video."""


class Transcriber(Protocol):
    """Turns the narration of a video (or audio) file into timed segments.

    Contract: `transcribe` returns segments in time order, times in seconds from the start
    of the file's timeline; a file without an audio track gives `[]`, not an error. It calls
    `on_progress(0..1)` as it goes and `checkpoint()` between chunks of work (which may
    raise, e.g. `JobCancelled`, to stop it). A damaged audio track raises `UnsupportedMedia`;
    a recogniser that is not set up properly raises `ConfigError`. `name` says which
    recogniser it is (for logs and benchmarks).
    """

    name: str

    def transcribe(
        self, path: Path, *, on_progress: Progress, checkpoint: Checkpoint
    ) -> list[Segment]: ...
