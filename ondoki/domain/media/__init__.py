"""Media import: from a screen recording to a step-by-step guide.

`probe` checks an upload (cheap: headers, first picture, the last seconds); `run_import` /
`MediaImporter` is the `media.import` job. The parts: `frames` (decoding and scene
detection), `transcribe` (the `Transcriber` port and the audio it hears) with its adapters
`captions`, `sphinx` and `whisper`, and `guide` (the model, its files, atomic publishing).
"""

from ondoki.domain.media.captions import CaptionsFirst
from ondoki.domain.media.guide import Guide, GuideStep, read_guide
from ondoki.domain.media.pipeline import (
    KIND,
    QUEUE,
    STAGES,
    ImportPayload,
    MediaImporter,
    run_import,
)
from ondoki.errors import UnsupportedMedia
from ondoki_adapters.media.audio import Segment, Transcriber, Word
from ondoki_adapters.media.frames import SceneOptions, StepFrame, extract_steps
from ondoki_adapters.media.probe import MediaLimits, VideoInfo, probe
from ondoki_adapters.media.sphinx import PocketsphinxTranscriber
from ondoki_adapters.media.whisper import WhisperTranscriber

__all__ = [
    "KIND",
    "QUEUE",
    "STAGES",
    "CaptionsFirst",
    "Guide",
    "GuideStep",
    "ImportPayload",
    "MediaImporter",
    "MediaLimits",
    "PocketsphinxTranscriber",
    "SceneOptions",
    "Segment",
    "StepFrame",
    "Transcriber",
    "UnsupportedMedia",
    "VideoInfo",
    "WhisperTranscriber",
    "Word",
    "extract_steps",
    "probe",
    "read_guide",
    "run_import",
]
