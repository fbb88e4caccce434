"""The audio speech recognisers listen to: the first audio track of a file, decoded with
PyAV as 16 kHz mono PCM.

Every time is in seconds from the start of the video's timeline (`VideoInfo.start_time`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import av.container

from ondoki.errors import UnsupportedMedia
from ondoki.ports.media import Checkpoint, Progress
from ondoki_adapters.media.probe import PacketDecoder, audio_stream, describe, open_video

#: What speech recognisers are fed: 16 kHz mono signed 16-bit PCM.
SAMPLE_RATE = 16_000


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
