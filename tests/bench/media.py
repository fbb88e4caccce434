"""Media import: seconds of processing per minute of 720p video, and the worker's peak memory.

Generates a narrated 2-minute 1280x720 30 fps screen recording (an 8-second scene, with
about five seconds of speech by espeak-ng, after another; tones stand in without
espeak-ng), runs the
`media.import` job on it in a fresh process (`python -m tests.bench.media VIDEO OUT`, the
way a worker runs it) and reads that process's peak RSS. The same is done for a video a
quarter as long: if memory is bounded, the two peaks are about the same. Bare decoding of
the same file is the floor the frame extraction stage is compared with.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import av

from tests.bench.report import Figure
from tests.media.generate import Scene, Truth, write_video

ROOT = Path(__file__).resolve().parents[2]
SCENE_SECONDS = 8.0
PHRASES = ("hello world", "what time is it", "type your password", "the window is open")
#: Faster than real time: a minute of video takes less than a minute.
GOAL_SECONDS_PER_MINUTE = 60.0
#: Memory does not grow with the length of the video (a quarter as long: about the same).
GOAL_MEMORY_RATIO = 1.25


def scenes(seconds: float) -> list[Scene]:
    count = max(1, round(seconds / SCENE_SECONDS))
    # Narrated like a tutorial: about five of every eight seconds are speech.
    said = [". ".join(PHRASES[n % 4 :] + PHRASES[: n % 4]) for n in range(count)]
    return [Scene(seconds / count, say=said[n], say_at=1.0) for n in range(count)]


def make(path: Path, seconds: float) -> Truth:
    return write_video(path, scenes(seconds), size=(1280, 720), fps=30, audio=True)


async def import_in_a_process(video: Path, out: Path) -> dict[str, Any]:
    result = await anyio.run_process(
        [sys.executable, "-m", "tests.bench.media", str(video), str(out)], check=True, cwd=ROOT
    )
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


def bare_decode(video: Path) -> float:
    """Seconds to decode every picture of `video` and nothing else."""
    start = time.perf_counter()
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            pass
    return time.perf_counter() - start


async def run(server: object, *, scale: float = 1.0) -> list[Figure]:
    """Benchmark figures for the media import; `server` (Redis) is not used."""
    seconds = max(2 * SCENE_SECONDS, 120.0 * scale)
    with tempfile.TemporaryDirectory(prefix="ondoki-bench-") as tmp:
        root = Path(tmp)
        long = await anyio.to_thread.run_sync(make, root / "long.mp4", seconds)
        short = await anyio.to_thread.run_sync(make, root / "short.mp4", seconds / 4)
        floor = await anyio.to_thread.run_sync(bare_decode, long.path)
        big = await import_in_a_process(long.path, root / "long-guide")
        small = await import_in_a_process(short.path, root / "short-guide")
        guide = json.loads((root / "long-guide" / "guide.json").read_bytes())

    minutes = long.duration / 60
    per_minute = big["seconds"] / minutes
    stages = {stage: t / minutes for stage, t in big["stages"].items()}
    found = [step["start"] for step in guide["steps"]]
    expected = long.boundaries[:-1]
    error = (
        max(abs(a - b) for a, b in zip(found, expected, strict=True))
        if len(found) == len(expected)
        else float("nan")
    )
    mib = 1024 * 1024
    ratio = big["peak_rss"] / small["peak_rss"]
    label = f"{long.duration / 60:.1f}-min 720p30"
    return [
        Figure(
            "media",
            f"import time per minute of video ({label}, narrated)",
            per_minute,
            "s/min",
            goal=f"<= {GOAL_SECONDS_PER_MINUTE:.0f} s/min",
            met=per_minute <= GOAL_SECONDS_PER_MINUTE,
            detail={
                **{f"{stage}_s_per_min": v for stage, v in stages.items()},
                "video_seconds": long.duration,
                "import_seconds": big["seconds"],
            },
        ),
        Figure(
            "media",
            "frame extraction time / bare decoding time",
            big["stages"]["extracting_frames"] / floor,
            "x",
            detail={"bare_decode_s_per_min": floor / minutes},
        ),
        Figure("media", "transcription time per minute", stages["transcribing"], "s/min"),
        Figure(
            "media",
            "steps found / scenes",
            len(found) / len(expected),
            "x",
            goal="1.0",
            met=len(found) == len(expected),
            detail={"max_boundary_error_s": error},
        ),
        Figure(
            "media",
            f"worker peak RSS, {long.duration:.0f} s video",
            big["peak_rss"] / mib,
            "MiB",
            detail={"growth_during_import_mib": (big["peak_rss"] - big["base_rss"]) / mib},
        ),
        Figure(
            "media",
            f"worker peak RSS, {short.duration:.0f} s video",
            small["peak_rss"] / mib,
            "MiB",
            detail={"growth_during_import_mib": (small["peak_rss"] - small["base_rss"]) / mib},
        ),
        Figure(
            "media",
            "peak RSS, 4x longer video / shorter",
            ratio,
            "x",
            goal=f"<= {GOAL_MEMORY_RATIO}x",
            met=ratio <= GOAL_MEMORY_RATIO,
        ),
    ]


class StageClock:
    """A JobContext that notes when each stage begins."""

    def __init__(self) -> None:
        self.job_id = "bench"
        self.owner: str | None = None
        self.attempt = 1
        self.began: dict[str, float] = {}

    def report(self, stage: str, progress: float) -> None:
        self.began.setdefault(stage, time.perf_counter())

    def checkpoint(self) -> None:
        return None


def _peak_rss() -> int:
    """This process's peak resident memory, in bytes.

    VmHWM belongs to the process image: unlike ru_maxrss, which Linux carries over an exec
    from the parent that forked us, it measures this program alone."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child(video: Path, out: Path) -> dict[str, Any]:
    """Run one import here, as a worker would, and say how long each stage took."""
    from ondoki.entrypoints.bootstrap import build_importer
    from ondoki.support.settings import Settings

    run_import = build_importer(Settings())

    base = _peak_rss()
    clock = StageClock()
    start = time.perf_counter()
    run_import(clock, {"video_path": str(video), "output_dir": str(out)})
    end = time.perf_counter()
    marks = [*clock.began.items(), ("end", end)]
    return {
        "seconds": end - start,
        "stages": {stage: marks[n + 1][1] - t for n, (stage, t) in enumerate(marks[:-1])},
        "base_rss": base,
        "peak_rss": _peak_rss(),
    }


if __name__ == "__main__":
    print(json.dumps(child(Path(sys.argv[1]), Path(sys.argv[2]))))
