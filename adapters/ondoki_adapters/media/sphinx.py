"""Offline speech recognition with CMU PocketSphinx: the default speech `Transcriber`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# pocketsphinx has no type information: its objects are Any, kept inside this module.
import pocketsphinx

from ondoki.errors import ConfigError
from ondoki.ports.media import Checkpoint, Progress, Segment, Word
from ondoki_adapters.media.audio import SAMPLE_RATE, has_audio, pcm_chunks


class PocketsphinxTranscriber:
    """Offline speech recognition with CMU PocketSphinx and its bundled US English model.

    Voice activity detection (pocketsphinx's `Endpointer`) cuts the audio into utterances,
    each decoded on its own and at most `max_utterance` seconds long, so memory stays
    bounded and silence costs little. Word timings come from the decoder's segmentation.
    `model`, `dictionary` and `language_model` point at other pocketsphinx model files.
    """

    name = "pocketsphinx"

    def __init__(
        self,
        *,
        model: Path | None = None,
        dictionary: Path | None = None,
        language_model: Path | None = None,
        max_utterance: float = 30.0,
    ) -> None:
        self.config: dict[str, Any] = {"samprate": SAMPLE_RATE, "loglevel": "FATAL"}
        for key, value in (("hmm", model), ("dict", dictionary), ("lm", language_model)):
            if value is not None:
                if not value.exists():
                    raise ConfigError(f"pocketsphinx {key}", f"{value} does not exist")
                self.config[key] = str(value)
        self.max_utterance = max_utterance

    def transcribe(
        self, path: Path, *, on_progress: Progress, checkpoint: Checkpoint
    ) -> list[Segment]:
        if not has_audio(path):
            on_progress(1.0)
            return []
        endpointer = pocketsphinx.Endpointer(sample_rate=SAMPLE_RATE)
        utterances = _Utterances(pocketsphinx.Decoder(**self.config), self.max_utterance)
        size: int = endpointer.frame_bytes
        pending = b""
        for chunk in pcm_chunks(path, on_progress=on_progress, checkpoint=checkpoint):
            pending += chunk
            offset = 0
            while len(pending) - offset >= size:
                was_in_speech = bool(endpointer.in_speech)
                speech = endpointer.process(pending[offset : offset + size])
                offset += size
                if speech is not None:
                    utterances.feed(speech, None if was_in_speech else endpointer.speech_start)
                    if not endpointer.in_speech:
                        utterances.finish()
            pending = pending[offset:]
        if endpointer.in_speech:
            speech = endpointer.end_stream(pending)
            if speech is not None:
                utterances.feed(speech, None)
        utterances.finish()
        return utterances.segments


class _Utterances:
    """Feeds speech to a pocketsphinx decoder one utterance at a time, cutting utterances
    longer than `max_seconds` so that the decoder's memory stays bounded."""

    def __init__(self, decoder: Any, max_seconds: float) -> None:
        self.decoder = decoder
        self.limit = int(max_seconds * SAMPLE_RATE) * 2
        self.frame_rate: float = float(decoder.config["frate"] or 100)
        self.segments: list[Segment] = []
        self.active = False
        self.start = 0.0
        self.fed = 0

    def feed(self, speech: bytes, region_start: float | None) -> None:
        """Decode `speech`; `region_start` is when a new speech region began (None when it
        continues the current one)."""
        if not self.active:
            # A region that goes on past a cut continues where the last utterance stopped.
            self.start = (
                self.start + self.fed / 2 / SAMPLE_RATE if region_start is None else region_start
            )
            self.fed = 0
            self.decoder.start_utt()
            self.active = True
        self.decoder.process_raw(speech, False, False)
        self.fed += len(speech)
        if self.fed >= self.limit:
            self.finish()

    def finish(self) -> None:
        """End the utterance under way, if any, and keep what was recognised in it."""
        if not self.active:
            return
        self.decoder.end_utt()
        self.active = False
        words: list[Word] = []
        for seg in self.decoder.seg():
            text = str(seg.word)
            if text.startswith(("<", "[", "+")):  # silence, sentence marks, noise
                continue
            words.append(
                Word(
                    start=round(self.start + seg.start_frame / self.frame_rate, 3),
                    end=round(self.start + (seg.end_frame + 1) / self.frame_rate, 3),
                    text=_ALTERNATE.sub("", text),
                )
            )
        if words:
            self.segments.append(
                Segment(
                    start=words[0].start,
                    end=words[-1].end,
                    text=" ".join(w.text for w in words),
                    words=tuple(words),
                )
            )


# "the(2)": the second pronunciation of "the" in the dictionary.
_ALTERNATE = re.compile(r"\(\d+\)$")
