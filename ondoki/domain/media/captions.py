"""Captions: a caption file uploaded beside the video (parsed here), or a text subtitle
stream inside it (read by a `SubtitleReader`), and `CaptionsFirst`, the transcriber that
prefers them to speech recognition."""

from __future__ import annotations

import re
from pathlib import Path

from ondoki.errors import UnsupportedMedia
from ondoki.ports.media import Checkpoint, Progress, Segment, SubtitleReader, Transcriber

# Sidecar captions larger than this are not captions.
_MAX_CAPTION_BYTES = 8 * 1024 * 1024


class CaptionsFirst:
    """A `Transcriber`: captions beside the video or inside it (read by `subtitles`) when
    there are any (with at least one cue); else `speech` (when given) on the audio track;
    else nothing."""

    name = "captions-first"

    def __init__(self, speech: Transcriber | None = None, *, subtitles: SubtitleReader) -> None:
        self.speech = speech
        self.subtitles = subtitles

    def transcribe(
        self, path: Path, *, on_progress: Progress, checkpoint: Checkpoint
    ) -> list[Segment]:
        captions = read_captions(path, self.subtitles, checkpoint=checkpoint)
        if captions:  # an empty or unreadable caption file does not silence the speech
            on_progress(1.0)
            return captions
        if self.speech is None:
            on_progress(1.0)
            return []
        return self.speech.transcribe(path, on_progress=on_progress, checkpoint=checkpoint)


def sidecar_captions(video: Path) -> Path | None:
    """The caption file uploaded beside `video`, if any: `name.srt`, `name.vtt`, or the
    video's full name with `.srt`/`.vtt` appended."""
    for suffix in (".srt", ".vtt"):
        for candidate in (video.with_suffix(suffix), video.with_name(video.name + suffix)):
            if candidate.is_file():
                return candidate
    return None


def read_captions(
    video: Path, subtitles: SubtitleReader, *, checkpoint: Checkpoint = lambda: None
) -> list[Segment] | None:
    """Captions for `video`: a sidecar file, else its first text subtitle stream (read by
    `subtitles`); None when it has neither (an empty list when it has captions without
    text)."""
    sidecar = sidecar_captions(video)
    if sidecar is not None:
        return parse_captions(_read_text(sidecar))
    return subtitles.subtitles(video, checkpoint=checkpoint)


def _read_text(path: Path) -> str:
    with path.open("rb") as file:
        data = file.read(_MAX_CAPTION_BYTES + 1)
    if len(data) > _MAX_CAPTION_BYTES:
        raise UnsupportedMedia(f"the caption file is over {_MAX_CAPTION_BYTES // 2**20} MiB")
    return data.decode("utf-8-sig", errors="replace")


_TIMING = re.compile(
    r"(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{1,3})\s*-->\s*(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{1,3})"
)
_TAGS = re.compile(r"<[^>]*>|\{[^}]*\}")


def parse_captions(text: str) -> list[Segment]:
    """Cues of a SubRip (.srt) or WebVTT (.vtt) document, in time order; markup removed.

    Lenient like players are: cue numbers and identifiers, VTT headers, NOTE and STYLE
    blocks, cue settings and hour-less timestamps are all accepted; blocks without a
    timing line are skipped."""
    cues: list[Segment] = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        lines = block.strip("\n").split("\n")
        for number, line in enumerate(lines):
            match = _TIMING.search(line)
            if match is None:
                continue
            g = match.groups()
            start, end = _stamp(*g[:4]), _stamp(*g[4:])
            words = clean_caption(" ".join(lines[number + 1 :]))
            if words and end >= start:
                cues.append(Segment(start=start, end=end, text=words, source="captions"))
            break
    return sorted(cues, key=lambda cue: cue.start)


def _stamp(hours: str | None, minutes: str, seconds: str, fraction: str) -> float:
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + float(f"0.{fraction}")


def clean_caption(text: str) -> str:
    """Caption text without markup (HTML-like tags, ASS overrides) and on one line."""
    text = _TAGS.sub("", text).replace("\\N", " ").replace("\\n", " ").replace("\\h", " ")
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&nbsp;", " "), ("&amp;", "&")):
        text = text.replace(entity, char)
    return " ".join(text.split())
