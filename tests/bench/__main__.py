"""Run the benchmarks: `python -m tests.bench [--quick] [section ...]`.

Each section starts from the same real redis-server (its own, on a free port), measures
ondoki against a peer or a floor in the same run, and prints ratios. Figures are also written
to .bench/results.json. Nothing here is a pass/fail test: goals are reported, not asserted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anyio

from tests.bench import cache, jobs, media, notifications, sessions
from tests.bench.report import Figure, print_figures, save
from tests.redis_server import RedisServer

SECTIONS = {
    "cache": cache.run,
    "notifications": notifications.run,
    "jobs": jobs.run,
    "media": media.run,
    "sessions": sessions.run,
}


async def main(sections: list[str], scale: float) -> list[Figure]:
    server = RedisServer().start()
    figures: list[Figure] = []
    try:
        for name in sections:
            figures += await SECTIONS[name](server, scale=scale)
    finally:
        server.close()
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument("sections", nargs="*", metavar="section", help=", ".join(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="a tenth of the work")
    args = parser.parse_args()
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(
            f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}"
        )
    figures = anyio.run(main, args.sections or list(SECTIONS), 0.1 if args.quick else 1.0)
    print_figures(figures)
    save(figures, Path(".bench/results.json"))
