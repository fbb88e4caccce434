"""Videos made once per test session (small and short, so the suite stays fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.media.generate import Scene, Truth, has_espeak, write_video

#: Phrases pocketsphinx recognises from espeak-ng's voice (measured: most others come out
#: garbled), each with words that must be heard in its step.
SPOKEN = {
    "hello world": {"hello", "world"},
    "what time is it": {"what", "time"},
    "type your password": {"your", "password"},
}


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def silent_video(media_dir: Path) -> Truth:
    """Five scenes of uneven lengths, no audio."""
    scenes = [Scene(s) for s in (2.0, 1.5, 2.5, 3.0, 1.6)]
    return write_video(media_dir / "silent.mp4", scenes)


@pytest.fixture(scope="session")
def narrated_video(media_dir: Path) -> Truth:
    """Four scenes, three of them with a phrase spoken by espeak-ng at a known time."""
    if not has_espeak():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    phrases = list(SPOKEN)
    scenes = [
        Scene(3.0, say=phrases[0], say_at=0.5),
        Scene(2.5),
        Scene(3.0, say=phrases[1], say_at=0.6),
        Scene(3.0, say=phrases[2], say_at=0.4),
    ]
    return write_video(media_dir / "narrated.mp4", scenes, audio=True)


@pytest.fixture(scope="session")
def captioned_video(media_dir: Path) -> Truth:
    """Three scenes with a mov_text subtitle stream and tones on the audio track."""
    scenes = [
        Scene(2.5, say="x", caption="Open the <b>Settings</b> menu"),
        Scene(2.5, say="x", caption="Pick a theme"),
        Scene(2.5, say="x", caption="Save & close"),
    ]
    return write_video(media_dir / "captioned.mp4", scenes, audio=True, subtitles=True, tones=True)


@pytest.fixture(scope="session")
def narrated_or_tones(media_dir: Path) -> Truth:
    """Three scenes with audio (tones), for tests that need an audio track but no words."""
    scenes = [Scene(2.0, say="x"), Scene(2.0, say="x"), Scene(2.0)]
    return write_video(media_dir / "tones.mp4", scenes, audio=True, tones=True)
