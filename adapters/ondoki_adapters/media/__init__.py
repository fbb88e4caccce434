"""Media adapters: the ports of `ondoki.ports.media` on real libraries.

`PyAVDecoder` (`MediaDecoder`: `probe`, `frames`, `subtitles`, on PyAV/FFmpeg and numpy);
`PocketsphinxTranscriber` (`sphinx`, offline, works out of the box) and
`WhisperTranscriber` (`whisper`, faster-whisper with a model the operator provides; the
package is the optional `whisper` extra), both fed by `audio`. This package imports no
other adapter package.
"""

from ondoki_adapters.media.decoder import PyAVDecoder
from ondoki_adapters.media.frames import SceneOptions
from ondoki_adapters.media.sphinx import PocketsphinxTranscriber
from ondoki_adapters.media.whisper import WhisperTranscriber

__all__ = ["PocketsphinxTranscriber", "PyAVDecoder", "SceneOptions", "WhisperTranscriber"]
