"""The guide: steps with their pictures and narration, as `guide.json` and `guide.md`, and
the staging directory that makes publishing it all-or-nothing.

Layout of a published guide directory::

    guide.json      the `Guide`, msgspec JSON
    guide.md        the same as Markdown, pictures linked relatively
    frames/step-001.jpg ...
"""

from __future__ import annotations

import bisect
import glob
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import msgspec

from ondoki.ports.media import Segment, StepFrame, VideoInfo

GUIDE_JSON = "guide.json"
GUIDE_MD = "guide.md"
FRAMES = "frames"
#: Bumped when the JSON changes in a way readers must know about.
GUIDE_VERSION = 1

Narration = Literal["captions", "speech", "none"]


class GuideStep(msgspec.Struct, kw_only=True):
    """One step: its span in the video (seconds), its picture (a path relative to the guide
    directory) and what was said during it."""

    index: int
    start: float
    end: float
    frame: str
    text: str = ""
    segments: list[Segment] = msgspec.field(default_factory=list)


class Guide(msgspec.Struct, kw_only=True):
    """A step-by-step guide made from one video."""

    version: int = GUIDE_VERSION
    title: str
    source: str
    duration: float
    width: int
    height: int
    narration: Narration
    steps: list[GuideStep]


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Guide).decode


def build_guide(
    *,
    title: str,
    source: str,
    info: VideoInfo,
    duration: float,
    steps: Sequence[StepFrame],
    segments: Sequence[Segment],
) -> Guide:
    """Put the steps and the narration together: each piece of narration goes to the step
    during which it was spoken (see `assign_narration`)."""
    pieces = assign_narration([s.start for s in steps], segments)
    narration: Narration = "none"
    if segments:
        narration = "captions" if all(s.source == "captions" for s in segments) else "speech"
    return Guide(
        title=title,
        source=source,
        duration=round(duration, 3),
        width=info.width,
        height=info.height,
        narration=narration,
        steps=[
            GuideStep(
                index=step.index,
                start=round(step.start, 3),
                end=round(step.end, 3),
                frame=f"{FRAMES}/{step.frame}",
                text=" ".join(p.text for p in own),
                segments=own,
            )
            for step, own in zip(steps, pieces, strict=True)
        ],
    )


def assign_narration(starts: Sequence[float], segments: Sequence[Segment]) -> list[list[Segment]]:
    """Split `segments` among the steps starting at `starts` (sorted, the first at 0).

    A segment with word timings is split by word, each word going to the step its middle
    falls in, so that an utterance running across a cut is shared as it was spoken; one
    without (a caption cue) goes whole to the step its middle falls in. Times before the
    first step or after the last belong to the first or the last step."""
    pieces: list[list[Segment]] = [[] for _ in starts]
    if not starts:
        return pieces

    def step_at(t: float) -> int:
        return max(0, bisect.bisect_right(starts, t) - 1)

    for segment in segments:
        if not segment.words:
            pieces[step_at((segment.start + segment.end) / 2)].append(segment)
            continue
        run = [step_at((word.start + word.end) / 2) for word in segment.words]
        first = 0
        for i in range(1, len(run) + 1):
            if i == len(run) or run[i] != run[first]:
                words = segment.words[first:i]
                pieces[run[first]].append(
                    msgspec.structs.replace(
                        segment,
                        start=words[0].start,
                        end=words[-1].end,
                        text=" ".join(w.text for w in words),
                        words=words,
                    )
                )
                first = i
    return pieces


def render_markdown(guide: Guide) -> str:
    """The guide as Markdown: a heading and picture per step, then its narration.

    Narration comes from uploads (captions) and recognisers: it is escaped so that it reads
    as text, never as Markdown or HTML, wherever the guide is rendered."""
    lines = [f"# {escape(guide.title)}", ""]
    for step in guide.steps:
        lines += [
            f"## Step {step.index} ({_clock(step.start)} to {_clock(step.end)})",
            "",
            f"![Step {step.index}]({step.frame})",
            "",
        ]
        if step.text:
            lines += [escape(step.text), ""]
    return "\n".join(lines)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def escape(text: str) -> str:
    """`text` made inert in Markdown and HTML: one line, punctuation escaped."""
    text = " ".join(text.split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 60}:{whole % 60:02}"


def write_guide(guide: Guide, directory: Path) -> None:
    """Write `guide.json` and `guide.md` into `directory` (a staging directory)."""
    (directory / GUIDE_JSON).write_bytes(_encode(guide))
    (directory / GUIDE_MD).write_text(render_markdown(guide), encoding="utf-8")


def read_guide(directory: Path) -> Guide:
    """The guide published in `directory`; `FileNotFoundError` when there is none."""
    return _decode((directory / GUIDE_JSON).read_bytes())


# -- staging and publishing ---------------------------------------------------------------


def clean_leftovers(destination: Path) -> None:
    """Remove what an interrupted run left beside `destination`: staging directories and
    replaced guides (`.NAME.tmp-*`, `.NAME.old-*`). Runs of one job never overlap (the
    queue guarantees it), so anything there is stale."""
    parent = destination.parent
    if not parent.is_dir():
        return
    for prefix in (f".{destination.name}.tmp-", f".{destination.name}.old-"):
        for path in parent.glob(f"{glob.escape(prefix)}*"):
            shutil.rmtree(path, ignore_errors=True)


def staging_dir(destination: Path) -> Path:
    """A new, empty directory beside `destination` (so on the same file system, where a
    rename is atomic) to build the guide in."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    path = destination.parent / f".{destination.name}.tmp-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    return path


def publish(staging: Path, destination: Path) -> None:
    """Move the complete guide in `staging` to `destination`, replacing any guide there.

    Readers see the old guide or the new one, never a mixture: the new directory is renamed
    into place in one step. Replacing an existing guide takes two renames (POSIX cannot
    rename over a non-empty directory), so for an instant there is none, which readers
    see as "not found", never as half a guide."""
    _fsync_tree(staging)
    old: Path | None = None
    if destination.exists():
        old = destination.parent / f".{destination.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(destination, old)
    os.replace(staging, destination)
    _fsync_dir(destination.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    """Make what is in `root` durable before it becomes visible: after a power cut the
    guide is there whole or not at all."""
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(directory))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
