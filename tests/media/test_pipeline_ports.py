"""The media.import job against stand-in ports: the core's side of the media ports, with
no decoding and no recognition (so what is checked is the job's own logic: which port is
asked what, with what limits, and what comes out)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ondoki.domain.media import STAGES, CaptionsFirst, MediaImporter, read_guide
from ondoki.errors import UnsupportedMedia
from ondoki.ports.media import (
    Checkpoint,
    Extraction,
    MediaLimits,
    Progress,
    Segment,
    StepFrame,
    VideoInfo,
    Word,
)
from tests.media.fakes import FakeContext

INFO = VideoInfo(
    container="mov,mp4,m4a,3gp,3g2,mj2",
    duration=6.0,
    start_time=0.0,
    width=640,
    height=360,
    fps=30.0,
    video_codec="h264",
    has_audio=True,
    audio_codec="aac",
)


class StandInDecoder:
    """Two steps of three seconds; writes placeholder pictures; records what it was asked."""

    def __init__(self, *, refuse: str | None = None, cues: list[Segment] | None = None) -> None:
        self.refuse = refuse
        self.cues = cues
        self.limits: list[MediaLimits] = []

    def probe(self, path: Path, *, limits: MediaLimits) -> VideoInfo:
        self.limits.append(limits)
        if self.refuse is not None:
            raise UnsupportedMedia(self.refuse)
        return INFO

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
        assert info == INFO
        self.limits.append(limits)
        frames_dir.mkdir(parents=True, exist_ok=True)
        steps = []
        for index, (start, end) in enumerate([(0.0, 3.0), (3.0, 6.0)], start=1):
            checkpoint()
            name = f"step-{index:03}.jpg"
            (frames_dir / name).write_bytes(b"picture")
            steps.append(StepFrame(index=index, start=start, end=end, frame=name, frame_time=end))
            on_progress(index / 2)
        return Extraction(steps=steps, duration=6.0)

    def subtitles(self, path: Path, *, checkpoint: Checkpoint) -> list[Segment] | None:
        return self.cues


class StandInSpeech:
    """Hears one utterance running across the cut at 3 s."""

    name = "stand-in"

    def __init__(self) -> None:
        self.calls = 0

    def transcribe(
        self, path: Path, *, on_progress: Progress, checkpoint: Checkpoint
    ) -> list[Segment]:
        self.calls += 1
        words = (Word(2.0, 2.5, "click"), Word(2.6, 2.9, "save"), Word(3.2, 3.6, "then"))
        on_progress(1.0)
        return [Segment(start=2.0, end=3.6, text="click save then", words=words)]


def video(tmp_path: Path) -> Path:
    path = tmp_path / "upload" / "demo.mp4"
    path.parent.mkdir()
    path.write_bytes(b"not read by the stand-ins")
    return path


def test_the_job_builds_the_guide_from_what_the_ports_give(tmp_path: Path) -> None:
    decoder, speech = StandInDecoder(), StandInSpeech()
    limits = MediaLimits(max_duration=60.0)
    importer = MediaImporter(
        decoder=decoder, transcriber=CaptionsFirst(speech, subtitles=decoder), limits=limits
    )
    ctx = FakeContext()
    out = tmp_path / "guide"
    result = importer(ctx, {"video_path": str(video(tmp_path)), "output_dir": str(out)})

    assert result == {
        "steps": 2,
        "duration": 6.0,
        "narration": "speech",
        "guide": str(out / "guide.json"),
    }
    assert decoder.limits == [limits, limits]  # the job's limits, for the probe and decoding
    guide = read_guide(out)
    assert (guide.width, guide.height, guide.title) == (640, 360, "demo")
    # The utterance is shared at the cut, word by word.
    assert [step.text for step in guide.steps] == ["click save", "then"]
    assert [step.frame for step in guide.steps] == ["frames/step-001.jpg", "frames/step-002.jpg"]
    assert all((out / step.frame).read_bytes() == b"picture" for step in guide.steps)
    assert ctx.stages == list(STAGES)
    progress = [p for _, p in ctx.reports]
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_embedded_captions_come_through_the_subtitle_port(tmp_path: Path) -> None:
    cue = Segment(start=4.0, end=5.0, text="Pick a theme", source="captions")
    decoder, speech = StandInDecoder(cues=[cue]), StandInSpeech()
    importer = MediaImporter(decoder=decoder, transcriber=CaptionsFirst(speech, subtitles=decoder))
    out = tmp_path / "guide"
    result = importer(FakeContext(), {"video_path": str(video(tmp_path)), "output_dir": str(out)})
    assert result["narration"] == "captions"
    assert [step.text for step in read_guide(out).steps] == ["", "Pick a theme"]
    assert speech.calls == 0


def test_a_refused_probe_writes_nothing(tmp_path: Path) -> None:
    decoder = StandInDecoder(refuse="the file has no video stream")
    importer = MediaImporter(decoder=decoder, transcriber=StandInSpeech())
    with pytest.raises(UnsupportedMedia, match="no video stream"):
        importer(
            FakeContext(), {"video_path": str(video(tmp_path)), "output_dir": str(tmp_path / "g")}
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload"]
