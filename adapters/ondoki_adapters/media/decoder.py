"""`PyAVDecoder`: the `MediaDecoder` port with PyAV (FFmpeg), one object for the
composition root to hand out."""

from __future__ import annotations

from pathlib import Path

from ondoki.ports.media import (
    Checkpoint,
    Extraction,
    MediaLimits,
    Progress,
    Segment,
    VideoInfo,
)
from ondoki_adapters.media.frames import SceneOptions, extract_steps
from ondoki_adapters.media.probe import probe
from ondoki_adapters.media.subtitles import container_captions


class PyAVDecoder:
    """Reads uploads with FFmpeg through PyAV, restricted to local files and the demuxers
    of `probe.DEMUXERS`. `scenes` tunes how steps are found (see `frames`)."""

    def __init__(self, *, scenes: SceneOptions | None = None) -> None:
        self.scenes = scenes or SceneOptions()

    def probe(self, path: Path, *, limits: MediaLimits) -> VideoInfo:
        """See `VideoProbe.probe`."""
        return probe(path, limits=limits)

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
        """See `StepExtractor.extract_steps`."""
        return extract_steps(
            path,
            frames_dir,
            info=info,
            options=self.scenes,
            limits=limits,
            on_progress=on_progress,
            checkpoint=checkpoint,
        )

    def subtitles(self, path: Path, *, checkpoint: Checkpoint) -> list[Segment] | None:
        """See `SubtitleReader.subtitles`."""
        return container_captions(path, checkpoint=checkpoint)
