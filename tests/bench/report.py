"""Collecting and printing benchmark figures."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Figure:
    section: str
    name: str
    value: float
    unit: str
    goal: str = ""
    met: bool | None = None
    detail: dict[str, float] = field(default_factory=dict)


async def timed(operation: Callable[[], Awaitable[object]], count: int) -> float:
    """Seconds per call of `operation`, over `count` sequential calls."""
    start = time.perf_counter()
    for _ in range(count):
        await operation()
    return (time.perf_counter() - start) / count


async def rounds_of(
    candidates: dict[str, Callable[[], Awaitable[object]]], *, count: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, per round; rounds alternate the candidates (and
    their order) so that drift in the machine's load falls on every candidate alike."""
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            samples[name].append(await timed(candidates[name], count))
    return samples


async def interleaved(
    candidates: dict[str, Callable[[], Awaitable[object]]], *, count: int, rounds: int
) -> dict[str, float]:
    """Median seconds per call of each candidate over alternating rounds."""
    samples = await rounds_of(candidates, count=count, rounds=rounds)
    return {name: statistics.median(values) for name, values in samples.items()}


def paired_ratio(ours: list[float], peer: list[float]) -> float:
    """The median of round-by-round ratios: each pair ran back to back, under the same
    load, which cancels most of a shared machine's noise."""
    return statistics.median(a / b for a, b in zip(ours, peer, strict=True))


def print_figures(figures: list[Figure]) -> None:
    width = max(len(f"{f.section}: {f.name}") for f in figures)
    for f in figures:
        verdict = "" if f.met is None else ("  ok" if f.met else "  MISSED")
        goal = f"  (goal: {f.goal})" if f.goal else ""
        print(f"{f.section + ': ' + f.name:<{width}}  {f.value:>12,.3f} {f.unit}{goal}{verdict}")


def save(figures: list[Figure], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(f) for f in figures], indent=2) + "\n")
