"""Run the benchmarks: `python -m tests.bench [--quick] [section ...]`.

A section with parts (notifications: see its docstring) runs only some as
`section:part,part`, e.g. `python -m tests.bench --quick notifications:steady`.

Each section starts from the same real redis-server (its own, on a free port), measures
ondoki against a peer or a floor in the same run, and prints ratios. Figures are also written
to .bench/results.json. Nothing here is a pass/fail test: goals are reported, not asserted.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from tests.bench import cache, jobs, media, notifications, sessions
from tests.bench.report import Figure, print_figures, save
from tests.redis_server import RedisServer

SECTIONS: dict[str, Callable[..., Awaitable[list[Figure]]]] = {
    "cache": cache.run,
    "notifications": notifications.run,
    "jobs": jobs.run,
    "media": media.run,
    "sessions": sessions.run,
}


#: The parts each section with parts can run alone.
PARTS = {"notifications": notifications.PARTS}


def parse_section(text: str) -> tuple[str, dict[str, Any]]:
    """`name` or `name:part,part`: the section and the keyword arguments its `run` takes."""
    name, colon, parts = text.partition(":")
    if name not in SECTIONS:
        raise ValueError(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
    if not colon:
        return name, {}
    chosen = parts.split(",")
    if "" in chosen:
        raise ValueError(f"an empty part in {text!r}: name parts as {name}:part,part")
    unknown = set(chosen) - set(PARTS.get(name, ()))
    if unknown:
        choices = ", ".join(PARTS.get(name, ())) or "none"
        raise ValueError(f"unknown part(s) {', '.join(sorted(unknown))} of {name}: {choices}")
    return name, {"parts": chosen}


async def main(sections: list[str], scale: float) -> list[Figure]:
    server = RedisServer().start()
    figures: list[Figure] = []
    try:
        for text in sections:
            name, options = parse_section(text)
            figures += await SECTIONS[name](server, scale=scale, **options)
    finally:
        server.close()
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument("sections", nargs="*", metavar="section", help=", ".join(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="a tenth of the work")
    args = parser.parse_args()
    for text in args.sections:
        try:
            parse_section(text)
        except ValueError as exc:
            parser.error(str(exc))
    figures = anyio.run(main, args.sections or list(SECTIONS), 0.1 if args.quick else 1.0)
    print_figures(figures)
    save(figures, Path(".bench/results.json"))
