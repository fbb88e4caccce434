"""The media import job: a screen recording in, a step-by-step guide out.

Stages, as the job record shows them: `extracting_frames` (decode, find the steps, write a
picture per step), `transcribing` (captions, or speech recognition on the audio track) and
`generating_guide` (put them together, write `guide.json` and `guide.md`, publish).

Progress is reported for the job as a whole: one number from 0 to 1 that only grows, each
stage owning a slice of it (see `_slices`), so a client can draw a single progress bar
and label it with the stage. Reports are spaced at least 1% apart to spare the queue.

Everything is built in a staging directory beside `output_dir` and renamed into place at
the end: a cancelled, failed or killed run never leaves a partial guide where readers look,
and the next run clears whatever a killed one left behind.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from ondoki.domain.media.captions import parse_captions, sidecar_captions
from ondoki.domain.media.guide import (
    FRAMES,
    GUIDE_JSON,
    build_guide,
    clean_leftovers,
    publish,
    staging_dir,
    write_guide,
)
from ondoki.errors import InvalidInput, RetryableJobError
from ondoki.ports.jobs import JobContext
from ondoki.ports.media import MediaDecoder, MediaLimits, Segment, Transcriber

#: The job kind this module implements, and the queue it goes on (workers consume `celery`
#: and `media` unless `ondoki worker --queues` says otherwise).
KIND = "media.import"
QUEUE = "media"
STAGES = ("extracting_frames", "transcribing", "generating_guide")


class ImportPayload(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """What a `media.import` job is given.

    `video_path`: the uploaded file. `output_dir`: where the guide directory appears (it
    must not be shared with another job). `title`: the guide's title (default: the video's
    file name). `captions_path`: a caption file (.srt/.vtt) uploaded with the video, which
    then wins over any other narration source.
    """

    video_path: str
    output_dir: str
    title: str | None = None
    captions_path: str | None = None


class MediaImporter:
    """The `media.import` job handler, configured once (in the composition root) and
    called by the worker for each job: `importer(ctx, payload) -> result`.

    `decoder` reads the video (probe, steps and their pictures, embedded subtitles);
    `transcriber` gives the narration when no caption file came with the upload (the
    composition root gives `CaptionsFirst` over a speech recogniser).
    """

    def __init__(
        self,
        *,
        decoder: MediaDecoder,
        transcriber: Transcriber,
        limits: MediaLimits | None = None,
    ) -> None:
        self.decoder = decoder
        self.transcriber = transcriber
        self.limits = limits or MediaLimits()

    def __call__(self, ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        """Run one import. Returns `{"steps", "duration", "narration", "guide"}` (the path
        of `guide.json`). Raises `UnsupportedMedia` (final: retrying cannot help) for a
        video that cannot be imported, `InvalidInput` for a bad payload, `JobCancelled`
        from `ctx.checkpoint()`, and `RetryableJobError` when the output cannot be
        written."""
        try:
            job = msgspec.convert(payload, ImportPayload)
        except msgspec.ValidationError as exc:
            raise InvalidInput(f"bad media.import payload: {exc}") from None
        video, destination = Path(job.video_path), Path(job.output_dir)
        ctx.report(STAGES[0], 0.0)
        ctx.checkpoint()
        info = self.decoder.probe(video, limits=self.limits)
        # Captions take no time to read; speech recognition takes most of the job.
        recognise = (
            info.has_audio
            and job.captions_path is None
            and not info.subtitle_codecs
            and sidecar_captions(video) is None
        )
        frames_end, speech_end = _slices(recognise)

        with _writing():
            clean_leftovers(destination)
            staging = staging_dir(destination)
        try:
            extraction = self.decoder.extract_steps(
                video,
                staging / FRAMES,
                info=info,
                limits=self.limits,
                on_progress=_Reporter(ctx, STAGES[0], 0.0, frames_end),
                checkpoint=ctx.checkpoint,
            )
            ctx.checkpoint()
            ctx.report(STAGES[1], frames_end)
            segments = self._narration(
                video, job, _Reporter(ctx, STAGES[1], frames_end, speech_end), ctx
            )
            ctx.checkpoint()
            ctx.report(STAGES[2], speech_end)
            guide = build_guide(
                title=job.title or video.stem,
                source=video.name,
                info=info,
                duration=extraction.duration,
                steps=extraction.steps,
                segments=segments,
            )
            with _writing():
                write_guide(guide, staging)
            ctx.checkpoint()  # the last moment a cancel can still stop it
            with _writing():
                publish(staging, destination)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        ctx.report(STAGES[2], 1.0)
        return {
            "steps": len(guide.steps),
            "duration": guide.duration,
            "narration": guide.narration,
            "guide": str(destination / GUIDE_JSON),
        }

    def _narration(
        self, video: Path, job: ImportPayload, report: _Reporter, ctx: JobContext
    ) -> list[Segment]:
        if job.captions_path is not None:
            try:
                text = Path(job.captions_path).read_text(encoding="utf-8-sig", errors="replace")
            except FileNotFoundError:
                raise InvalidInput("the caption file of this import does not exist") from None
            report(1.0)
            return parse_captions(text)
        return self.transcriber.transcribe(video, on_progress=report, checkpoint=ctx.checkpoint)


@contextmanager
def _writing() -> Iterator[None]:
    """Errors writing the guide are about this machine (a full or read-only disk), not the
    video: worth another attempt, maybe on another worker."""
    try:
        yield
    except OSError as exc:
        raise RetryableJobError(f"could not write the guide: {exc.strerror or exc}") from None


def _slices(recognise: bool) -> tuple[float, float]:
    """Where frame extraction's and transcription's shares of the overall progress end.

    Measured on generated 720p narrated recordings (tests/bench/media.py): pocketsphinx
    takes about 16 s per minute of video, frame extraction 3 s (more on busier real
    screens, which cost more to decode); captions and silent videos take next to nothing
    to transcribe. Writing the guide is quick whatever the case."""
    return (0.25, 0.97) if recognise else (0.95, 0.97)


class _Reporter:
    """Maps a stage's own progress (0..1) onto its slice of the job's, reporting each
    whole percent at most once."""

    def __init__(self, ctx: JobContext, stage: str, start: float, end: float) -> None:
        self.ctx, self.stage, self.start, self.end = ctx, stage, start, end
        self.last = start

    def __call__(self, fraction: float) -> None:
        overall = self.start + (self.end - self.start) * min(1.0, max(0.0, fraction))
        if overall - self.last >= 0.01:
            self.last = overall
            self.ctx.report(self.stage, overall)
