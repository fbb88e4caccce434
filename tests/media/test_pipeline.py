"""The media.import job end to end, on a fake JobContext: stages, progress, cancel, crash."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import msgspec
import pytest

from ondoki.domain.media import STAGES, CaptionsFirst, MediaImporter, read_guide
from ondoki.domain.media import pipeline as pipeline_module
from ondoki.domain.media.guide import Guide
from ondoki.errors import InvalidInput, JobCancelled, RetryableJobError, UnsupportedMedia
from ondoki.ports.media import MediaLimits
from tests.media.conftest import SPOKEN
from tests.media.fakes import FakeContext
from tests.media.generate import Truth, truncate, write_srt
from tests.media.wiring import DECODER, run_import

TOLERANCE = 0.15
ROOT = Path(__file__).resolve().parents[2]


def payload(video: Path, out: Path, **extra: Any) -> dict[str, Any]:
    return {"video_path": str(video), "output_dir": str(out), **extra}


def assert_no_debris(out: Path) -> None:
    """Nothing but the published guide directory (if any) beside it."""
    if out.parent.exists():
        assert [p.name for p in out.parent.iterdir() if p.name != out.name] == []


def test_imports_a_narrated_video(tmp_path: Path, narrated_video: Truth) -> None:
    ctx = FakeContext()
    out = tmp_path / "imports" / "job-1"
    result = run_import(ctx, payload(narrated_video.path, out, title="Sign in"))

    assert result == {
        "steps": 4,
        "duration": pytest.approx(narrated_video.duration, abs=0.05),
        "narration": "speech",
        "guide": str(out / "guide.json"),
    }
    msgspec.json.encode(result)  # JSON-able, as job results must be
    guide = read_guide(out)
    assert guide.title == "Sign in" and guide.source == "narrated.mp4"
    assert [s.start for s in guide.steps] == pytest.approx(
        narrated_video.boundaries[:-1], abs=TOLERANCE
    )
    # Each phrase is narration of the step it was spoken in, and of no other.
    spoken_in = {scene for _, _, scene in narrated_video.speech}
    for index, step in enumerate(guide.steps):
        assert bool(step.text) == (index in spoken_in), (index, step.text)
        for segment in step.segments:
            assert step.start - TOLERANCE <= segment.start and segment.end <= step.end + TOLERANCE
    heard = [set(guide.steps[scene].text.split()) for _, _, scene in narrated_video.speech]
    assert sum(bool(h & e) for h, e in zip(heard, SPOKEN.values(), strict=True)) >= 2, heard
    # Every step's picture is there and is a JPEG of the video's size.
    for step in guide.steps:
        with av.open(str(out / step.frame)) as image:
            frame = next(image.decode(video=0))
            assert (frame.width, frame.height) == (320, 240)
    assert "![Step 4](frames/step-004.jpg)" in (out / "guide.md").read_text()
    assert_no_debris(out)


def test_stages_and_progress(tmp_path: Path, narrated_video: Truth) -> None:
    ctx = FakeContext()
    run_import(ctx, payload(narrated_video.path, tmp_path / "out"))
    assert ctx.stages == list(STAGES)
    progress = [p for _, p in ctx.reports]
    assert progress == sorted(progress), "overall progress only grows"
    assert progress[0] == 0.0 and progress[-1] == 1.0
    assert 20 < len(ctx.reports) <= 110, "about one report per percent, no more"
    by_stage = {stage: [p for s, p in ctx.reports if s == stage] for stage in STAGES}
    assert max(by_stage["extracting_frames"]) <= 0.25 < max(by_stage["transcribing"])
    assert ctx.checkpoints > narrated_video.duration * 15


def test_imports_a_silent_video(tmp_path: Path, silent_video: Truth) -> None:
    ctx = FakeContext()
    result = run_import(ctx, payload(silent_video.path, tmp_path / "out"))
    assert result["steps"] == 5 and result["narration"] == "none"
    guide = read_guide(tmp_path / "out")
    assert all(step.text == "" and step.segments == [] for step in guide.steps)
    assert guide.title == "silent"


def test_uses_sidecar_captions(tmp_path: Path, silent_video: Truth) -> None:
    video = tmp_path / "upload" / "video.mp4"
    video.parent.mkdir()
    video.symlink_to(silent_video.path)
    write_srt(video.with_suffix(".srt"), [(0.5, 1.5, "first step"), (2.2, 3.0, "second step")])
    run_import(FakeContext(), payload(video, tmp_path / "out"))
    guide = read_guide(tmp_path / "out")
    assert guide.narration == "captions"
    assert [s.text for s in guide.steps[:3]] == ["first step", "second step", ""]


def test_uses_a_caption_file_named_in_the_payload(tmp_path: Path, narrated_video: Truth) -> None:
    captions = tmp_path / "uploaded.vtt"
    captions.write_text("WEBVTT\n\n00:06.000 --> 00:07.000\nthird step\n")
    run_import(
        FakeContext(), payload(narrated_video.path, tmp_path / "out", captions_path=str(captions))
    )
    guide = read_guide(tmp_path / "out")
    assert [s.text for s in guide.steps] == ["", "", "third step", ""]


def test_container_captions_win(tmp_path: Path, captioned_video: Truth) -> None:
    result = run_import(FakeContext(), payload(captioned_video.path, tmp_path / "out"))
    assert result["narration"] == "captions"
    guide = read_guide(tmp_path / "out")
    assert [s.text for s in guide.steps] == [
        "Open the Settings menu",
        "Pick a theme",
        "Save & close",
    ]


@pytest.mark.parametrize("after", [3, 40, 150])
def test_cancel_stops_promptly_and_leaves_nothing(
    tmp_path: Path, narrated_video: Truth, after: int
) -> None:
    ctx = FakeContext(cancel_after=after)
    out = tmp_path / "out"
    with pytest.raises(JobCancelled):
        run_import(ctx, payload(narrated_video.path, out))
    assert ctx.checkpoints == after, "no work after the checkpoint that said stop"
    assert not out.exists()
    assert_no_debris(out)


def test_cancel_during_transcription(tmp_path: Path, narrated_video: Truth) -> None:
    ctx = FakeContext(cancel_after=100, cancel_in="transcribing")
    with pytest.raises(JobCancelled):
        run_import(ctx, payload(narrated_video.path, tmp_path / "out"))
    assert ctx.stages[-1] == "transcribing"
    assert 0.25 <= ctx.reports[-1][1] < 0.97
    assert not (tmp_path / "out").exists()


def test_a_crash_while_writing_leaves_no_half_guide_and_a_rerun_works(
    tmp_path: Path, silent_video: Truth, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"

    def crash(guide: Guide, directory: Path) -> None:
        (directory / "guide.json").write_text('{"version": 1, "title": "half')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline_module, "write_guide", crash)
    # Retryable: the queue runs the job again later, and that run starts clean.
    with pytest.raises(RetryableJobError, match="could not write the guide: No space left"):
        run_import(FakeContext(), payload(silent_video.path, out))
    assert not out.exists()
    assert_no_debris(out)

    monkeypatch.undo()
    assert run_import(FakeContext(), payload(silent_video.path, out))["steps"] == 5
    assert read_guide(out).steps[4].end == pytest.approx(silent_video.duration, abs=0.05)


def test_a_rerun_after_a_killed_run_cleans_up_and_replaces_the_guide(
    tmp_path: Path, silent_video: Truth, narrated_or_tones: Truth
) -> None:
    out = tmp_path / "out"
    run_import(FakeContext(), payload(narrated_or_tones.path, out))
    # What a worker killed mid-job leaves: a staging directory with half a guide.
    debris = tmp_path / ".out.tmp-deadbeef"
    (debris / "frames").mkdir(parents=True)
    (debris / "guide.json").write_text("{")
    run_import(FakeContext(), payload(silent_video.path, out))
    assert read_guide(out).source == "silent.mp4"
    assert sorted(p.name for p in (out / "frames").iterdir()) == [
        f"step-{n:03}.jpg" for n in range(1, 6)
    ]
    assert_no_debris(out)


def test_a_worker_killed_mid_job_leaves_no_guide_and_the_rerun_works(
    tmp_path: Path, narrated_video: Truth
) -> None:
    out = tmp_path / "out"
    code = (
        "import sys; from tests.media.fakes import FakeContext; "
        "from tests.media.wiring import run_import; "
        "run_import(FakeContext(), {'video_path': sys.argv[1], 'output_dir': sys.argv[2]})"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", code, str(narrated_video.path), str(out)], cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob(".out.tmp-*/frames/step-002.jpg")):
            assert worker.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        worker.kill()  # SIGKILL: no cleanup of any kind runs
    finally:
        worker.wait()
    assert not out.exists()
    assert list(tmp_path.glob(".out.tmp-*"))  # the debris a killed worker leaves
    run_import(FakeContext(), payload(narrated_video.path, out))
    assert len(read_guide(out).steps) == 4
    assert_no_debris(out)


def test_a_bad_video_is_refused_for_good(tmp_path: Path, silent_video: Truth) -> None:
    truncate(silent_video.path, tmp_path / "cut.mp4")
    with pytest.raises(UnsupportedMedia, match="not a readable video"):
        run_import(FakeContext(), payload(tmp_path / "cut.mp4", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_bad_payload_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"bad media\.import payload"):
        run_import(FakeContext(), {"video_path": 3})


def test_limits_apply(tmp_path: Path, silent_video: Truth) -> None:
    importer = MediaImporter(
        decoder=DECODER,
        transcriber=CaptionsFirst(subtitles=DECODER),
        limits=MediaLimits(max_duration=5.0),
    )
    with pytest.raises(UnsupportedMedia, match="over the limit"):
        importer(FakeContext(), payload(silent_video.path, tmp_path / "out"))
