"""Text subtitle streams inside a video, read with PyAV: the `SubtitleReader` port."""

from __future__ import annotations

from pathlib import Path

import av
import av.container

from ondoki.domain.media.captions import clean_caption
from ondoki.errors import UnsupportedMedia
from ondoki.ports.media import Checkpoint, Segment
from ondoki_adapters.media.probe import describe, open_video, text_subtitle_streams


def container_captions(
    video: Path, *, checkpoint: Checkpoint = lambda: None
) -> list[Segment] | None:
    """The cues of the first text subtitle stream in `video`, or None when it has none."""
    with open_video(video) as container:
        streams = text_subtitle_streams(container)
        if not streams:
            return None
        stream = streams[0]
        origin = (container.start_time or 0) / av.time_base
        cues: list[Segment] = []
        try:
            for packet in container.demux(stream):
                checkpoint()
                if packet.size == 0 or packet.pts is None or packet.time_base is None:
                    continue
                subtitle = stream.decode2(packet)
                if subtitle is None:
                    continue  # mov_text writes empty samples between cues
                at = float(packet.pts * packet.time_base) - origin
                start = at + subtitle.start_display_time / 1000
                if subtitle.end_display_time > subtitle.start_display_time:
                    end = at + subtitle.end_display_time / 1000
                else:
                    end = at + float((packet.duration or 0) * packet.time_base)
                text = clean_caption(" ".join(_subtitle_text(rect) for rect in subtitle))
                if text:
                    cues.append(Segment(start=start, end=end, text=text, source="captions"))
        except av.FFmpegError as exc:
            raise UnsupportedMedia(f"the subtitle stream is damaged ({describe(exc)})") from None
    return sorted(cues, key=lambda cue: cue.start)


def _subtitle_text(rect: object) -> str:
    if isinstance(rect, av.subtitles.subtitle.AssSubtitle):
        raw = rect.dialogue if rect.type == b"ass" else rect.text
        return raw.decode("utf-8", errors="replace")
    return ""  # bitmap subtitles carry no text
