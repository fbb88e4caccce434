"""Transcription: the `Transcriber` port, what it returns, and the audio it listens to.

Adapters: `ondoki.domain.media.captions.CaptionsFirst` (captions beside or inside the video win,
else a speech recogniser; the default), `ondoki_adapters.media.sphinx.PocketsphinxTranscriber`
(offline, works out of the box) and `ondoki_adapters.media.whisper.WhisperTranscriber` (better text
from a faster-whisper model the operator provides; optional).

Every time is in seconds from the start of the video's timeline (`VideoInfo.start_time`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import av
import av.container
import msgspec

from ondoki.errors import UnsupportedMedia
from ondoki_adapters.media.probe import PacketDecoder, audio_stream, describe, open_video

Progress = Callable[[float], None]
Checkpoint = Callable[[], None]

#: What speech recognisers are fed: 16 kHz mono signed 16-bit PCM.
SAMPLE_RATE = 16_000


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


class Transcriber(Protocol):
    """Turns the narration of a video (or audio) file into timed segments.

    Contract: `transcribe` returns segments in time order, times in seconds from the start
    of the file's timeline; a file without an audio track gives `[]`, not an error. It calls
    `on_progress(0..1)` as it goes and `checkpoint()` between chunks of work (which may
    raise, e.g. `JobCancelled`, to stop it). A damaged audio track raises `UnsupportedMedia`;
    a recogniser that is not set up properly raises `ConfigError`.
    """

    name: str

    def transcribe(
        self, path: Path, *, on_progress: Progress, checkpoint: Checkpoint
    ) -> list[Segment]: ...


def pcm_chunks(
    path: Path,
    *,
    on_progress: Progress = lambda _: None,
    checkpoint: Checkpoint = lambda: None,
) -> Iterator[bytes]:
    """The first audio track of `path` as 16 kHz mono s16 PCM, in chunks, from time 0 of
    the file's timeline: a track that starts late or has holes is padded with silence, so
    that a sample's position is its time. Nothing when there is no audio track."""
    with open_video(path) as container:
        stream = audio_stream(container)
        if stream is None:
            return
        origin = (container.start_time or 0) / av.time_base
        duration = (container.duration or 0) / av.time_base
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        shape: tuple[str, str, int] | None = None
        written = 0
        decoder = PacketDecoder("audio track")
        try:
            for packet in container.demux(stream):
                checkpoint()
                for frame in decoder.frames(packet.decode):
                    now = (frame.format.name, frame.layout.name, frame.sample_rate)
                    if shape is not None and now != shape:
                        # The resampler is set up by its first frame and refuses others:
                        # a track that changes rate or channels midway needs a new one.
                        for out in resampler.resample(None):
                            data = _s16_bytes(out)
                            written += len(data) // 2
                            yield data
                        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
                    shape = now
                    if frame.pts is not None and frame.time_base is not None:
                        at = int((float(frame.pts * frame.time_base) - origin) * SAMPLE_RATE)
                        if at - written > SAMPLE_RATE // 20:  # a hole of over 50 ms
                            yield from _silence(at - written)
                            written = at
                    for out in resampler.resample(frame):
                        data = _s16_bytes(out)
                        written += len(data) // 2
                        yield data
                    if duration > 0:
                        on_progress(min(1.0, written / SAMPLE_RATE / duration))
            for out in resampler.resample(None):
                yield _s16_bytes(out)
        except av.FFmpegError as exc:
            raise UnsupportedMedia(f"the audio track is damaged ({describe(exc)})") from None
    on_progress(1.0)


def _s16_bytes(frame: av.AudioFrame) -> bytes:
    # The plane may be padded past the samples; mono s16 is 2 bytes a sample.
    return bytes(frame.planes[0])[: frame.samples * 2]


def _silence(samples: int) -> Iterator[bytes]:
    block = SAMPLE_RATE * 10
    while samples > 0:
        yield bytes(2 * min(block, samples))
        samples -= block


def has_audio(path: Path) -> bool:
    """Whether `path` has an audio track."""
    with open_video(path) as container:
        return audio_stream(container) is not None
