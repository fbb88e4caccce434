"""Speech recognition with faster-whisper and a model the operator provides (optional)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ondoki.errors import ConfigError
from ondoki.ports.media import Checkpoint, Progress, Segment, Word
from ondoki_adapters.media.audio import SAMPLE_RATE, has_audio, pcm_chunks


class WhisperTranscriber:
    """faster-whisper (CTranslate2 Whisper) with a model the operator has put on disk, e.g.
    a converted `Systran/faster-whisper-small` directory (`model.bin`, `config.json`,
    `tokenizer.json`, ...). Nothing is downloaded: the model is loaded with
    `local_files_only`.

    The audio is fed in `chunk_seconds` windows so that memory stays bounded whatever the
    length (a word cut by a window edge may be lost or split). The model is loaded on first
    use and kept for later jobs.
    """

    name = "faster-whisper"

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        language: str | None = None,
        beam_size: int = 5,
        vad_filter: bool = True,
        chunk_seconds: float = 600.0,
    ) -> None:
        if not (model_dir / "model.bin").is_file():
            raise ConfigError(
                "whisper model", f"{model_dir} is not a faster-whisper model directory"
            )
        self.model_dir = model_dir
        self.device = device
        self.compute_type = compute_type
        self.language = language
        self.beam_size = beam_size
        self.vad_filter = vad_filter
        self.chunk_seconds = chunk_seconds
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                try:
                    # Imported here: faster-whisper is optional and heavy (CTranslate2, ONNX).
                    import faster_whisper
                except ImportError:
                    raise ConfigError(
                        "whisper model",
                        "faster-whisper is not installed (pip install 'faster-whisper>=1.2,<2')",
                    ) from None
                self._model = faster_whisper.WhisperModel(
                    str(self.model_dir),
                    device=self.device,
                    compute_type=self.compute_type,
                    local_files_only=True,
                )
            return self._model

    def transcribe(
        self, path: Path, *, on_progress: Progress, checkpoint: Checkpoint
    ) -> list[Segment]:
        if not has_audio(path):
            on_progress(1.0)
            return []
        model = self._load()
        segments: list[Segment] = []
        window = int(self.chunk_seconds * SAMPLE_RATE) * 2
        buffer = bytearray()
        offset = 0.0

        def run(pcm: bytes, at: float) -> None:
            samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
            found, _info = model.transcribe(
                samples,
                language=self.language,
                beam_size=self.beam_size,
                word_timestamps=True,
                vad_filter=self.vad_filter,
            )
            for piece in found:  # a generator: the work happens as it is iterated
                checkpoint()
                words = tuple(
                    Word(
                        start=round(at + w.start, 3), end=round(at + w.end, 3), text=w.word.strip()
                    )
                    for w in (piece.words or ())
                    if w.word.strip()
                )
                text = " ".join(str(piece.text).split())
                if text:
                    segments.append(
                        Segment(
                            start=round(at + piece.start, 3),
                            end=round(at + piece.end, 3),
                            text=text,
                            words=words,
                        )
                    )

        for chunk in pcm_chunks(path, on_progress=on_progress, checkpoint=checkpoint):
            buffer += chunk
            if len(buffer) >= window:
                run(bytes(buffer[:window]), offset)
                del buffer[:window]
                offset += self.chunk_seconds
        if buffer:
            run(bytes(buffer), offset)
        return segments
