"""Frame extraction: decode the video as a stream, find its steps, keep one picture each.

A step of a screen recording is one look of the screen: it begins with a cut or a large
change and lasts until the next. The detector compares small grayscale thumbnails, so its
cost and memory do not depend on the resolution, and it never holds more than a couple of
decoded frames, so they do not depend on the length either.

What counts as a change: a thumbnail pixel "changed" when it moved by more than
`pixel_delta` grey levels. The picture is *settled* when nearly all of it (`settled_share`)
has not changed for `settle_seconds`; a cursor, a blinking caret or a spinner is too small
to unsettle it, and a region in constant motion (a playing video) is left out of the
comparison. A new step is confirmed when the picture settles into a look that differs from
the step's look on at least `cut_fraction` of the picture; it starts when that change began.
A look that lasts less than `min_step_seconds` (a loading screen) is merged into the step
that follows it.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import av.container
import msgspec
import numpy as np
import numpy.typing as npt

from ondoki.errors import RetryableJobError, UnsupportedMedia
from ondoki.ports.media import (
    Checkpoint,
    Extraction,
    MediaLimits,
    Progress,
    StepFrame,
    VideoInfo,
)
from ondoki_adapters.media.probe import (
    PacketDecoder,
    describe,
    open_video,
    packet_end,
    video_stream,
)

Thumb = npt.NDArray[np.int16]


class SceneOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How steps are found (see the module docstring); the defaults suit screen recordings."""

    #: Frames looked at per second; the others are decoded (they must be) but not compared.
    analysis_fps: float = 10.0
    thumb_width: int = 64
    thumb_height: int = 36
    pixel_delta: int = 16
    cut_fraction: float = 0.02
    settled_share: float = 0.9
    settle_seconds: float = 0.3
    min_step_seconds: float = 1.0
    #: JPEG quantiser, 2 (best) to 31; 3 keeps UI text crisp at a fraction of PNG's size.
    jpeg_quality: int = 3


class Event(msgspec.Struct, frozen=True):
    """What `SceneDetector.feed` tells the caller about a sample.

    `closed` is the (start, end) of a step that ended; the caller's kept frame is its
    picture. `keep` says this sample's frame is now the best picture of the current step.
    """

    keep: bool
    closed: tuple[float, float] | None = None


class SceneDetector:
    """The step-finding state machine, fed one thumbnail at a time (no I/O, no frames)."""

    def __init__(self, options: SceneOptions) -> None:
        self.options = options
        self.step_start = 0.0
        self._ref: Thumb | None = None  # the current step's look
        self._prev: Thumb | None = None
        # Per thumbnail pixel: when it last changed, and since when it differs from `_ref`.
        self._changed_at = np.empty(0)
        self._differs_since = np.empty(0)

    def feed(self, t: float, thumb: Thumb) -> Event:
        """Take the sample at `t` seconds; say what it means for the steps."""
        o = self.options
        if self._ref is None or self._prev is None:
            self._ref, self._prev = thumb, thumb
            self._changed_at = np.full(thumb.shape, -np.inf)
            self._differs_since = np.full(thumb.shape, np.inf)
            return Event(keep=True)
        self._changed_at[np.abs(thumb - self._prev) > o.pixel_delta] = t
        self._prev = thumb
        still = (t - self._changed_at) >= o.settle_seconds - 1e-6
        differs = np.abs(thumb - self._ref) > o.pixel_delta
        self._differs_since = np.where(differs, np.minimum(self._differs_since, t), np.inf)
        if still.mean() < o.settled_share:
            return Event(keep=False)
        new_look = differs & still
        if new_look.mean() < o.cut_fraction:
            # Settled on (nearly) the step's own look: follow slow drift such as typing where
            # the picture is still, and take this frame unless a change is under way.
            self._ref = np.where(still, thumb, self._ref)
            return Event(keep=(differs & ~still).mean() < o.cut_fraction / 4)
        # The change began when most of the now-settled new look started to differ.
        began = float(np.median(self._differs_since[new_look]))
        self._ref = thumb
        self._differs_since = np.full(thumb.shape, np.inf)
        if began - self.step_start < o.min_step_seconds:
            return Event(keep=True)  # the step was a passing look: this one takes it over
        closed = (self.step_start, began)
        self.step_start = began
        return Event(keep=True, closed=closed)


def extract_steps(
    path: str | os.PathLike[str],
    frames_dir: Path,
    *,
    info: VideoInfo,
    options: SceneOptions | None = None,
    limits: MediaLimits | None = None,
    on_progress: Progress = lambda _: None,
    checkpoint: Checkpoint = lambda: None,
) -> Extraction:
    """Decode the video at `path`, find its steps and write one JPEG per step into
    `frames_dir` (`step-001.jpg`, ...), calling `on_progress(0..1)` as it goes and
    `checkpoint()` between frames (it may raise to stop the work).

    Raises `UnsupportedMedia` when the video turns out damaged, truncated or over `limits`
    while decoding, and `RetryableJobError` when a picture cannot be written.
    """
    options = options or SceneOptions()
    limits = limits or MediaLimits()
    frames_dir.mkdir(parents=True, exist_ok=True)
    detector = SceneDetector(options)
    steps: list[StepFrame] = []
    kept: tuple[av.VideoFrame, float] | None = None
    origin = info.start_time
    step = 1.0 / options.analysis_fps
    next_sample = -np.inf
    t = end = 0.0  # the latest picture's time, and where the pictures end
    data_end = 0.0  # where any stream's packets end, to tell a truncated file
    frames = 0
    decoder = PacketDecoder("video data")

    def close(start: float, stop: float) -> None:
        assert kept is not None
        name = f"step-{len(steps) + 1:03}.jpg"
        _save(kept[0], frames_dir / name, options.jpeg_quality)
        steps.append(
            StepFrame(index=len(steps) + 1, start=start, end=stop, frame=name, frame_time=kept[1])
        )

    with open_video(path) as container:
        video = video_stream(container)
        video.thread_type = "AUTO"  # the worker runs one job at a time: use every core
        size = max(1, info.size_bytes)
        try:
            for packet in container.demux():
                checkpoint()
                data_end = max(data_end, packet_end(packet, origin))
                if packet.stream.index != video.index:
                    continue
                for frame in decoder.frames(packet.decode):
                    if not isinstance(frame, av.VideoFrame):
                        continue
                    frames += 1
                    t = max(0.0, _frame_time(frame, origin, frames, info.fps))
                    end = max(end, t + _frame_length(frame, info.fps))
                    limits.check_duration(t)
                    if t < next_sample:
                        continue
                    next_sample = max(next_sample + step, t + step / 2)
                    limits.check_picture(frame.width, frame.height)
                    event = detector.feed(t, _thumb(frame, options))
                    if event.closed is not None:
                        close(*event.closed)
                    if event.keep:
                        kept = (frame, t)
                    checkpoint()
                if info.duration:
                    on_progress(min(1.0, t / info.duration))
                elif packet.pos is not None and packet.pos >= 0:
                    on_progress(min(1.0, packet.pos / size))
        except av.FFmpegError as exc:
            raise UnsupportedMedia(
                f"the video data is damaged at {end:.1f} s ({describe(exc)})"
            ) from None
        if kept is None:
            raise UnsupportedMedia("the video stream has no decodable picture")
        info.check_complete(max(end, data_end))
        close(detector.step_start, max(end, kept[1]))
    on_progress(1.0)
    return Extraction(steps=steps, duration=end)


def _thumb(frame: av.VideoFrame, options: SceneOptions) -> Thumb:
    small = frame.reformat(
        width=options.thumb_width,
        height=options.thumb_height,
        format="gray",
        interpolation="AREA",  # an average, so compression noise and dithering cancel out
    )
    return small.to_ndarray().astype(np.int16)


def _save(frame: av.VideoFrame, path: Path, quality: int) -> None:
    """Write `frame` as a full-size JPEG with FFmpeg's own encoder (no Pillow needed)."""
    try:
        frame.save(path, qmin=quality, qmax=quality)
    except (OSError, av.FFmpegError) as exc:
        # The disk, not the video: worth another attempt once space is freed.
        raise RetryableJobError(f"could not write a step picture: {describe(exc)}") from None


def _frame_time(frame: av.VideoFrame, origin: float, count: int, fps: float | None) -> float:
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base) - origin
    return (count - 1) / (fps or 25.0)


def _frame_length(frame: av.VideoFrame, fps: float | None) -> float:
    if frame.duration and frame.time_base is not None:
        return float(frame.duration * frame.time_base)
    return 1.0 / (fps or 25.0)
