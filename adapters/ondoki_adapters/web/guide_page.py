"""A guide as one HTML page to read: its steps, their pictures (signed URLs, so the page
needs no credentials to show them) and what was said. No script, no outside stylesheet;
everything from the guide is escaped."""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from ondoki.domain.media import Guide

_STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto;
       padding: 0 1rem; color: #1b1b1b; background: #fff; }
h1 { font-size: 1.8rem; margin-bottom: 0.2rem; }
.meta { color: #5a5a5a; margin-top: 0; }
ol { padding: 0; list-style: none; }
li { margin: 2rem 0; border-top: 1px solid #ddd; padding-top: 1rem; }
h2 { font-size: 1.2rem; }
.when { color: #5a5a5a; font-weight: normal; }
img { max-width: 100%; height: auto; border: 1px solid #ccc; border-radius: 4px; }
.said { white-space: pre-wrap; }
.silent { color: #777; font-style: italic; }
"""


def clock(seconds: float) -> str:
    """`m:ss` (or `h:mm:ss`) for a time in the video."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render_page(guide: Guide, frame_url: Callable[[str], str]) -> str:
    """The page; `frame_url(step.frame)` gives each picture's (absolute, signed) URL."""
    said_by = {"captions": "captions", "speech": "speech recognition", "none": "no narration"}
    steps = []
    for step in guide.steps:
        text = (
            f'<p class="said">{escape(step.text)}</p>'
            if step.text.strip()
            else '<p class="silent">Nothing was said during this step.</p>'
        )
        steps.append(
            f'<li id="step-{step.index}">'
            f"<h2>Step {step.index} "
            f'<span class="when">({clock(step.start)} to {clock(step.end)})</span></h2>'
            f'<img src="{escape(frame_url(step.frame))}" alt="Step {step.index}" '
            f'width="{guide.width}" height="{guide.height}" loading="lazy">'
            f"{text}</li>"
        )
    title = escape(guide.title)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{title}</h1>"
        f'<p class="meta">{len(guide.steps)} steps, {clock(guide.duration)}; '
        f"words from {said_by.get(guide.narration, escape(guide.narration))}</p>"
        f"<ol>{''.join(steps)}</ol></body></html>\n"
    )
