"""Frame extraction: one step per scene, at the right times, with the right picture."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from ondoki.errors import UnsupportedMedia
from ondoki.ports.media import Extraction
from ondoki_adapters.media.frames import SceneDetector, SceneOptions, extract_steps
from ondoki_adapters.media.probe import probe
from tests.media.generate import PALETTE, Scene, Truth, damage, draw, remux, write_video

# Steps are found on frames sampled 10 times a second, from a 15 fps video.
TOLERANCE = 0.15


def extract(truth: Truth, out: Path) -> Extraction:
    return extract_steps(truth.path, out, info=probe(truth.path), options=SceneOptions())


def assert_matches(extraction: Extraction, truth: Truth) -> None:
    starts = [step.start for step in extraction.steps]
    ends = [step.end for step in extraction.steps]
    assert len(starts) == len(truth.boundaries) - 1, (starts, truth.boundaries)
    assert starts == pytest.approx(truth.boundaries[:-1], abs=TOLERANCE)
    assert ends == pytest.approx(truth.boundaries[1:], abs=TOLERANCE)
    assert [step.index for step in extraction.steps] == list(range(1, len(starts) + 1))
    for step in extraction.steps:
        assert step.start <= step.frame_time < step.end


def picture(path: Path) -> npt.NDArray[np.uint8]:
    with av.open(str(path)) as container:
        assert container.format.name == "image2"
        frame = next(container.decode(video=0))
        return np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)


def test_one_step_per_scene_at_the_right_times(tmp_path: Path, silent_video: Truth) -> None:
    extraction = extract(silent_video, tmp_path)
    assert_matches(extraction, silent_video)
    assert extraction.duration == pytest.approx(silent_video.duration, abs=0.01)


def test_each_step_keeps_a_full_size_picture_of_its_scene(
    tmp_path: Path, silent_video: Truth
) -> None:
    extraction = extract(silent_video, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [s.frame for s in extraction.steps]
    w, h = silent_video.width, silent_video.height
    for index, step in enumerate(extraction.steps):
        image = picture(tmp_path / step.frame).astype(np.int16)
        assert image.shape == (h, w, 3)
        # Closest to its own scene (the cursor aside), far from every other scene.
        distances = [
            np.abs(image - draw(i, PALETTE[i], w, h, 0.5).astype(np.int16)).mean()
            for i in range(len(silent_video.boundaries) - 1)
        ]
        assert int(np.argmin(distances)) == index
        assert distances[index] < 5


def test_webm_vp8(tmp_path: Path) -> None:
    truth = write_video(tmp_path / "a.webm", [Scene(1.5), Scene(2.0), Scene(1.5)], codec="libvpx")
    assert_matches(extract(truth, tmp_path / "frames"), truth)


def test_webm_without_duration_like_a_browser_recording(tmp_path: Path) -> None:
    truth = write_video(
        tmp_path / "rec.webm", [Scene(1.5), Scene(2.0)], codec="libvpx", seekable=False
    )
    info = probe(truth.path)
    assert info.duration is None
    progress: list[float] = []
    extraction = extract_steps(
        truth.path, tmp_path / "frames", info=info, on_progress=progress.append
    )
    assert_matches(extraction, truth)
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) > 10


def test_a_partial_change_like_a_dialog_is_a_step(tmp_path: Path) -> None:
    # Same window, only the panel (a ninth of the picture) changes colour: a dialog opens.
    color = (235, 235, 240)
    truth = write_video(tmp_path / "dialog.mp4", [Scene(2.0, color=color), Scene(2.0, color=color)])
    extraction = extract(truth, tmp_path / "frames")
    assert_matches(extraction, truth)


def test_a_passing_look_is_merged_into_the_next_step(tmp_path: Path) -> None:
    # A 0.5 s "loading" screen between two scenes is not a step of its own.
    truth = write_video(tmp_path / "flash.mp4", [Scene(2.0), Scene(0.5), Scene(2.0)])
    extraction = extract(truth, tmp_path / "frames")
    assert len(extraction.steps) == 2
    assert extraction.steps[1].start == pytest.approx(2.0, abs=TOLERANCE)
    assert extraction.steps[1].frame_time > 2.5


def test_a_single_scene_is_one_step(tmp_path: Path) -> None:
    truth = write_video(tmp_path / "one.mp4", [Scene(2.0)])
    assert_matches(extract(truth, tmp_path / "frames"), truth)


def test_progress_and_checkpoints(tmp_path: Path, silent_video: Truth) -> None:
    progress: list[float] = []
    checkpoints = 0

    def checkpoint() -> None:
        nonlocal checkpoints
        checkpoints += 1

    extract_steps(
        silent_video.path,
        tmp_path,
        info=probe(silent_video.path),
        on_progress=progress.append,
        checkpoint=checkpoint,
    )
    assert progress == sorted(progress)
    assert progress[-1] == 1.0
    assert len(progress) > 50
    assert checkpoints >= silent_video.duration * 15  # at least once per frame


def test_damage_in_the_middle_is_refused_while_decoding(
    tmp_path: Path, silent_video: Truth
) -> None:
    remux(silent_video.path, tmp_path / "fast.mp4", faststart=True)
    damage(tmp_path / "fast.mp4", tmp_path / "bad.mp4", 0.5, 0.9)
    info = probe(tmp_path / "bad.mp4")  # the header and the tail look fine
    with pytest.raises(UnsupportedMedia, match="damaged"):
        extract_steps(tmp_path / "bad.mp4", tmp_path / "frames", info=info)


# -- the detector alone, on synthetic thumbnails ------------------------------------------


def run_detector(
    thumbs: list[npt.NDArray[np.int16]], fps: float = 10.0
) -> list[tuple[float, float]]:
    detector = SceneDetector(SceneOptions())
    closed = []
    for n, thumb in enumerate(thumbs):
        event = detector.feed(n / fps, thumb)
        if event.closed is not None:
            closed.append(event.closed)
    return closed


def flat(value: int) -> npt.NDArray[np.int16]:
    return np.full((36, 64), value, np.int16)


def test_detector_ignores_a_region_in_constant_motion() -> None:
    # A playing video in a corner (6% of the picture) changes every sample: never a step.
    rng = np.random.default_rng(1)
    thumbs = []
    for _ in range(100):
        thumb = flat(200)
        thumb[:9, :16] = rng.integers(0, 255, (9, 16))
        thumbs.append(thumb)
    assert run_detector(thumbs) == []
    # ...but a cut behind it still is.
    for n in range(50, 100):
        thumbs[n][9:, :] = 40
        thumbs[n][:9, 16:] = 40
    assert run_detector(thumbs) == [(0.0, 5.0)]


def test_detector_follows_slow_drift_such_as_typing() -> None:
    # One character cell (a pixel of the thumbnail) at a time, over 8 seconds: no step.
    thumbs = []
    thumb = flat(230)
    for n in range(80):
        thumb = thumb.copy()
        thumb[10 + n // 40, 5 + n % 40] = 30
        thumbs.append(thumb)
    assert run_detector(thumbs) == []
