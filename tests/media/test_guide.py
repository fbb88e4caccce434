"""The guide: narration split among steps, Markdown that stays text, atomic publishing."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from ondoki.domain.media.guide import (
    assign_narration,
    build_guide,
    clean_leftovers,
    escape,
    publish,
    read_guide,
    render_markdown,
    staging_dir,
    write_guide,
)
from ondoki.ports.media import Segment, StepFrame, VideoInfo, Word


def words(*timed: tuple[float, float, str]) -> Segment:
    ws = tuple(Word(start=a, end=b, text=t) for a, b, t in timed)
    return Segment(start=ws[0].start, end=ws[-1].end, text=" ".join(w.text for w in ws), words=ws)


def test_an_utterance_across_a_cut_is_split_by_word() -> None:
    segment = words((1.0, 1.4, "open"), (1.5, 1.9, "the"), (2.1, 2.6, "menu"))
    pieces = assign_narration([0.0, 2.0], [segment])
    assert [[p.text for p in step] for step in pieces] == [["open the"], ["menu"]]
    assert (pieces[0][0].start, pieces[0][0].end) == (1.0, 1.9)
    assert (pieces[1][0].start, pieces[1][0].end) == (2.1, 2.6)


def test_a_caption_goes_whole_to_the_step_of_its_middle() -> None:
    cue = Segment(start=1.5, end=3.0, text="a caption", source="captions")
    late = Segment(start=99.0, end=100.0, text="after the end", source="captions")
    early = Segment(start=-1.0, end=-0.5, text="before the start", source="captions")
    pieces = assign_narration([0.0, 2.0, 4.0], [early, cue, late])
    assert [[p.text for p in step] for step in pieces] == [
        ["before the start"],
        ["a caption"],
        ["after the end"],
    ]


def info() -> VideoInfo:
    return VideoInfo(
        container="mov", duration=4.0, start_time=0.0, width=320, height=240, fps=15.0,
        video_codec="h264", has_audio=True,
    )  # fmt: skip


def steps() -> list[StepFrame]:
    return [
        StepFrame(index=1, start=0.0, end=2.0, frame="step-001.jpg", frame_time=1.9),
        StepFrame(index=2, start=2.0, end=4.0, frame="step-002.jpg", frame_time=3.9),
    ]


def test_builds_and_round_trips_a_guide(tmp_path: Path) -> None:
    guide = build_guide(
        title="How to",
        source="rec.mp4",
        info=info(),
        duration=4.0,
        steps=steps(),
        segments=[words((0.5, 0.9, "hello")), words((2.5, 2.9, "world"))],
    )
    assert guide.narration == "speech"
    assert [(s.index, s.frame, s.text) for s in guide.steps] == [
        (1, "frames/step-001.jpg", "hello"),
        (2, "frames/step-002.jpg", "world"),
    ]
    write_guide(guide, tmp_path)
    assert read_guide(tmp_path) == guide
    data = msgspec.json.decode((tmp_path / "guide.json").read_bytes())
    assert data["version"] == 1 and data["steps"][1]["start"] == 2.0
    markdown = (tmp_path / "guide.md").read_text()
    assert markdown.startswith("# How to\n")
    assert "## Step 2 (0:02 to 0:04)\n\n![Step 2](frames/step-002.jpg)\n\nworld\n" in markdown


def test_narration_kind() -> None:
    def kind(segments: list[Segment]) -> str:
        return build_guide(
            title="t", source="s", info=info(), duration=4, steps=steps(), segments=segments
        ).narration

    assert kind([]) == "none"
    assert kind([Segment(start=0, end=1, text="x", source="captions")]) == "captions"
    assert kind([words((0.0, 1.0, "x"))]) == "speech"


def test_markdown_keeps_narration_as_text() -> None:
    hostile = "<script>alert(1)</script> ![x](http://evil) # [link](javascript:x) *bold*"
    text = escape(hostile)
    assert "<" not in text and ">" not in text
    assert "](" not in text and "![" not in text
    guide = build_guide(
        title="# <img src=x>",
        source="s",
        info=info(),
        duration=4,
        steps=steps()[:1],
        segments=[Segment(start=0, end=1, text=hostile, source="captions")],
    )
    markdown = render_markdown(guide)
    assert "<script>" not in markdown and "<img" not in markdown
    assert markdown.count("![") == 1  # only the step's own picture


def test_publish_replaces_a_guide_in_one_rename(tmp_path: Path) -> None:
    destination = tmp_path / "imports" / "job-1"
    first = staging_dir(destination)
    (first / "guide.json").write_text("first")
    publish(first, destination)
    assert (destination / "guide.json").read_text() == "first"
    second = staging_dir(destination)
    (second / "guide.json").write_text("second")
    (second / "frames").mkdir()
    publish(second, destination)
    assert (destination / "guide.json").read_text() == "second"
    assert sorted(p.name for p in destination.parent.iterdir()) == ["job-1"]


def test_clean_leftovers_removes_only_this_guides_debris(tmp_path: Path) -> None:
    destination = tmp_path / "job-1"
    for name in (".job-1.tmp-abc", ".job-1.old-def", ".job-10.tmp-xyz", "job-1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "guide.json").write_text("x")
    clean_leftovers(destination)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".job-10.tmp-xyz", "job-1"]
    clean_leftovers(tmp_path / "missing-parent" / "job")  # nothing to do, no error


@pytest.mark.parametrize("name", ["job[1]", "job*"])
def test_clean_leftovers_with_glob_characters(tmp_path: Path, name: str) -> None:
    (tmp_path / f".{name}.tmp-1").mkdir()
    (tmp_path / ".jobX.tmp-1").mkdir()
    clean_leftovers(tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == [".jobX.tmp-1"]
