"""Media adapters: decoding with PyAV (FFmpeg), speech recognition with pocketsphinx or
faster-whisper."""
