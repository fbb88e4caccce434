"""Make real test videos with PyAV: UI-like scenes of known durations, optional speech.

Each scene is a flat "application window" (title bar, sidebar, a panel whose place and
colour differ per scene) with a small cursor moving across it, so that the scene detector
sees the little motion a real screen recording has inside a step and must not cut on it.
Speech comes from espeak-ng when it is installed (`has_espeak()`), placed at known times;
without it, tones stand in (useful for timing, useless for recognition).
"""

from __future__ import annotations

import contextlib
import fractions
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import numpy.typing as npt

Color = tuple[int, int, int]
Image = npt.NDArray[np.uint8]
Samples = npt.NDArray[np.float32]

# Distinct enough that every scene change is a real step, like switching screens.
PALETTE: tuple[Color, ...] = (
    (235, 235, 240),
    (40, 60, 110),
    (200, 90, 40),
    (30, 150, 90),
    (120, 40, 140),
    (240, 200, 60),
    (20, 20, 20),
    (90, 170, 220),
)

_ASS_HEADER = b"""[Script Info]
ScriptType: v4.00+
PlayResX: 384
PlayResY: 288

[V4+ Styles]
Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, \
Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, \
Shadow, Alignment, MarginL, MarginR, MarginV, Encoding
Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
"""


@dataclass(frozen=True)
class Scene:
    """One step of the recording: `seconds` long, optionally with words spoken `say_at`
    seconds into it and a caption shown over the same span."""

    seconds: float
    color: Color | None = None
    say: str | None = None
    say_at: float = 0.3
    caption: str | None = None


@dataclass
class Truth:
    """What the generator put where, to compare the pipeline's output with."""

    path: Path
    boundaries: list[float]  # scene start times, and the end of the video last
    speech: list[tuple[float, float, int]] = field(default_factory=list)  # (start, end, scene)
    duration: float = 0.0
    width: int = 0
    height: int = 0

    def scene_at(self, t: float) -> int:
        """Index of the scene playing at time `t`."""
        for index in range(len(self.boundaries) - 1):
            if t < self.boundaries[index + 1]:
                return index
        return len(self.boundaries) - 2


def has_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, rate: int) -> Samples:
    """`text` spoken by espeak-ng, as mono float samples at `rate`, silence trimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "say.wav"
        subprocess.run(
            ["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(wav), text],
            check=True,
            capture_output=True,
            timeout=60,
        )
        samples = _read_audio(wav, rate)
    loud = np.flatnonzero(np.abs(samples) > 0.02)
    return samples[loud[0] : loud[-1] + 1] if loud.size else samples


def tone(seconds: float, rate: int, hz: float = 440.0) -> Samples:
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _read_audio(path: Path, rate: int) -> Samples:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks: list[Samples] = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            chunks.extend(f.to_ndarray()[0] for f in resampler.resample(frame))
    chunks.extend(f.to_ndarray()[0] for f in resampler.resample(None))
    return np.concatenate(chunks).astype(np.float32)


def draw(
    scene_index: int,
    color: Color,
    width: int,
    height: int,
    progress: float,
    background: Image | None = None,
) -> Image:
    """One frame of a scene: a flat window layout, and a cursor `progress` of the way along.
    `background` is the scene without its cursor, if already drawn (much faster)."""
    if background is None:
        background = _window(scene_index, color, width, height)
    image = background.copy()
    # The cursor: small, always moving, never a step of its own.
    size = max(2, width // 80)
    cx = int(width * 0.1 + progress * width * 0.8)
    cy = int(height * 0.5 + 0.3 * height * np.sin(progress * 6.28))
    image[cy : cy + size, cx : cx + size] = 255
    return image


def _window(scene_index: int, color: Color, width: int, height: int) -> Image:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = color
    shade = tuple(max(0, c - 60) for c in color)
    image[: max(2, height // 12)] = shade  # title bar
    image[:, : max(2, width // 6)] = tuple(min(255, c + 40) for c in shade)  # sidebar
    # A panel whose position moves with the scene, so that scenes differ in layout too.
    pw, ph = width // 3, height // 3
    x = width // 5 + (scene_index * width // 7) % (width - pw - width // 5)
    y = height // 5 + (scene_index * height // 9) % (height - ph - height // 5)
    image[y : y + ph, x : x + pw] = PALETTE[(scene_index + 3) % len(PALETTE)]
    return image


def write_video(
    path: Path,
    scenes: Sequence[Scene],
    *,
    size: tuple[int, int] = (320, 240),
    fps: int = 15,
    audio: bool = False,
    subtitles: bool = False,
    codec: str = "libx264",
    audio_rate: int = 22_050,
    tones: bool = False,
    seekable: bool = True,
) -> Truth:
    """Write `scenes` to `path` (the container follows the suffix) and return the truth.

    With `audio`, each scene's `say` is spoken (espeak-ng, or a tone without it) `say_at`
    seconds into the scene (`tones` forces tones); without `say` the track is silent
    there. With `subtitles`,
    scene captions go into a text subtitle stream (mov_text in mp4, subrip otherwise).
    Without `seekable`, the muxer cannot go back to fill in the duration and the index, as
    with a browser's MediaRecorder writing WebM as it records.
    """
    width, height = size
    boundaries = [0.0]
    for scene in scenes:
        boundaries.append(boundaries[-1] + scene.seconds)
    duration = boundaries[-1]
    truth = Truth(path, boundaries, duration=duration, width=width, height=height)

    track: Samples | None = None
    if audio:
        track = np.zeros(int(duration * audio_rate) + audio_rate, np.float32)
        for index, scene in enumerate(scenes):
            if scene.say is None:
                continue
            if tones or not has_espeak():
                voice = tone(0.8, audio_rate)
            else:
                voice = speak(scene.say, audio_rate)
            start = boundaries[index] + scene.say_at
            at = int(start * audio_rate)
            voice = voice[: len(track) - at]
            track[at : at + len(voice)] = voice
            truth.speech.append((start, start + len(voice) / audio_rate, index))

    with contextlib.ExitStack() as stack:
        target: str | _WriteOnly = str(path)
        if not seekable:
            target = _WriteOnly(stack.enter_context(path.open("wb")))
        container = stack.enter_context(av.open(target, "w", format=_FORMATS.get(path.suffix)))
        video = container.add_stream(codec, rate=fps)
        assert isinstance(video, av.VideoStream)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            video.options = {"preset": "veryfast", "tune": "stillimage"}
        sound = None
        if track is not None:
            sound = container.add_stream("aac", rate=audio_rate)
            sound.layout = "mono"
        captions = None
        if subtitles:
            captions = container.add_stream("mov_text" if path.suffix == ".mp4" else "subrip")
            captions.time_base = fractions.Fraction(1, 1000)
            captions.codec_context.subtitle_header = _ASS_HEADER

        cues = [(i, s) for i, s in enumerate(scenes) if captions is not None and s.caption]
        audio_done = 0
        windows: dict[int, Image] = {}
        for number, (index, progress) in enumerate(_frames(scenes, fps)):
            if index not in windows:
                windows.clear()  # one scene at a time: memory stays flat for long videos
                windows[index] = _window(index, _color(scenes, index), width, height)
            while captions is not None and cues and boundaries[cues[0][0]] <= number / fps:
                _write_caption(container, captions, boundaries[cues[0][0]], cues.pop(0)[1])
            frame = av.VideoFrame.from_ndarray(
                draw(index, _color(scenes, index), width, height, progress, windows[index]),
                format="rgb24",
            )
            frame.pts = number
            container.mux(video.encode(frame))
            if sound is not None and track is not None:
                # Keep audio level with the video so the muxer interleaves without buffering.
                until = min(len(track), int((number + 1) / fps * audio_rate))
                audio_done = _write_audio(container, sound, track, audio_done, until)
        container.mux(video.encode(None))
        if sound is not None and track is not None:
            _write_audio(container, sound, track, audio_done, int(duration * audio_rate))
            container.mux(sound.encode(None))
    return truth


_FORMATS = {".webm": "webm", ".mkv": "matroska", ".mp4": "mp4"}


class _WriteOnly:
    """A file PyAV can only write to, not seek in."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    def write(self, data: bytes) -> int:
        return self.file.write(data)


def _color(scenes: Sequence[Scene], index: int) -> Color:
    return scenes[index].color or PALETTE[index % len(PALETTE)]


def _frames(scenes: Sequence[Scene], fps: int) -> Iterator[tuple[int, float]]:
    """(scene index, progress through the scene) for each frame, by frame start time."""
    starts = [0.0]
    for scene in scenes:
        starts.append(starts[-1] + scene.seconds)
    total = round(starts[-1] * fps)
    index = 0
    for number in range(total):
        t = number / fps
        while index < len(scenes) - 1 and t >= starts[index + 1] - 1e-9:
            index += 1
        yield index, (t - starts[index]) / scenes[index].seconds


def _write_audio(
    container: av.container.OutputContainer,
    stream: av.AudioStream,
    track: Samples,
    start: int,
    until: int,
) -> int:
    chunk = 1024
    while start + chunk <= until:
        frame = av.AudioFrame.from_ndarray(
            track[None, start : start + chunk], format="fltp", layout="mono"
        )
        frame.sample_rate = stream.rate
        frame.pts = start
        container.mux(stream.encode(frame))
        start += chunk
    return start


def _write_caption(
    container: av.container.OutputContainer,
    stream: av.subtitles.stream.SubtitleStream,
    scene_start: float,
    scene: Scene,
) -> None:
    start_ms = round((scene_start + scene.say_at) * 1000)
    length_ms = round((scene.seconds - scene.say_at - 0.2) * 1000)
    text = f"0,0,Default,,0,0,0,,{scene.caption}".encode()
    subtitle = av.subtitles.subtitle.SubtitleSet.create(
        text=text, start=0, end=length_ms, pts=start_ms
    )
    packet = stream.codec_context.encode_subtitle(subtitle)
    packet.stream = stream
    packet.pts = packet.dts = start_ms
    packet.duration = length_ms
    packet.time_base = fractions.Fraction(1, 1000)
    container.mux(packet)


def write_audio_only(path: Path, seconds: float = 2.0, rate: int = 22_050) -> None:
    """A file with an audio stream and no video (e.g. an .m4a someone uploaded)."""
    track = tone(seconds, rate)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        _write_audio(container, stream, track, 0, len(track))
        container.mux(stream.encode(None))


def write_srt(path: Path, cues: Sequence[tuple[float, float, str]]) -> None:
    """A SubRip file with `cues` of (start, end, text)."""

    def stamp(t: float) -> str:
        ms = round(t * 1000)
        return f"{ms // 3_600_000:02}:{ms // 60_000 % 60:02}:{ms // 1000 % 60:02},{ms % 1000:03}"

    blocks = [
        f"{n}\n{stamp(start)} --> {stamp(end)}\n{text}\n"
        for n, (start, end, text) in enumerate(cues, 1)
    ]
    path.write_text("\n".join(blocks), encoding="utf-8")


def remux(source: Path, target: Path, *, faststart: bool = False) -> None:
    """Copy `source`'s streams into `target` without re-encoding; with `faststart`, an MP4
    gets its index at the front, so that a truncated copy still opens."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(source)) as src, av.open(str(target), "w", options=options) as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is None:
                continue  # the demuxer's end-of-stream marker
            packet.stream = streams[packet.stream.index]
            dst.mux(packet)


def truncate(source: Path, target: Path, keep: float = 0.5) -> None:
    """Copy the first `keep` of `source`'s bytes: an upload cut short."""
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])


def damage(source: Path, target: Path, start: float, stop: float, seed: int = 7) -> None:
    """Copy `source` with the bytes between the `start` and `stop` fractions scrambled."""
    data = bytearray(source.read_bytes())
    a, b = int(len(data) * start), int(len(data) * stop)
    data[a:b] = np.random.default_rng(seed).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))


def write_huge(path: Path, width: int, height: int) -> None:
    """A one-frame H.264 video of an absurd size (cheap: a flat grey picture)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=1, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        frame = av.VideoFrame(16, 16, "gray").reformat(width, height, "yuv420p")
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
