"""Media import: from a screen recording to a step-by-step guide.

`MediaImporter` is the `media.import` job (`pipeline`): it reads the video through the
`MediaDecoder` port and its narration through the `Transcriber` port (both in
`ondoki.ports.media`; the adapters are in `ondoki_adapters.media`), and writes the guide
(`guide`: the model, its files, atomic publishing). `captions` parses caption files and
holds `CaptionsFirst`, the transcriber that prefers captions to speech recognition.
"""

from ondoki.domain.media.captions import CaptionsFirst, parse_captions
from ondoki.domain.media.guide import Guide, GuideStep, read_guide
from ondoki.domain.media.pipeline import KIND, QUEUE, STAGES, ImportPayload, MediaImporter

__all__ = [
    "KIND",
    "QUEUE",
    "STAGES",
    "CaptionsFirst",
    "Guide",
    "GuideStep",
    "ImportPayload",
    "MediaImporter",
    "parse_captions",
    "read_guide",
]
