"""The `ondoki` command: serve the API (and later run workers and checks)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import anyio

from ondoki.errors import ConfigError
from ondoki.settings import Settings, load_settings

WORKER_CLASSES = ("asyncio", "uvloop", "trio")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ondoki", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the HTTP and WebSocket API with hypercorn")
    serve.add_argument("--host", help="address to bind (default: ONDOKI_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: ONDOKI_PORT or 8000)")
    serve.add_argument("--worker-class", choices=WORKER_CLASSES, default="asyncio")
    return parser


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


async def _serve(settings: Settings, worker_class: str) -> None:
    from hypercorn.config import Config

    from adapters.web.app import create_app
    from ondoki.bootstrap import open_services, resolve_api_key

    api_key = resolve_api_key(settings)
    app = create_app(lambda: open_services(settings, api_key=api_key))
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.graceful_timeout = settings.shutdown_grace_seconds
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")

    stop = anyio.Event()

    async def watch_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logging.getLogger("ondoki").info(
                    "received %s, shutting down", signal.Signals(signum).name
                )
                stop.set()
                return

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch_signals)
        if worker_class == "trio":
            from hypercorn.trio import serve as trio_serve

            await trio_serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        else:
            from hypercorn.asyncio import serve as asyncio_serve

            await asyncio_serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        tasks.cancel_scope.cancel()


def serve(settings: Settings, worker_class: str) -> None:
    if worker_class == "trio" and settings.uses_redis:
        raise ConfigError(
            "--worker-class",
            "trio cannot run the Redis adapters (redis-py is asyncio-only); "
            "use asyncio or uvloop, or unset REDIS_URL",
        )
    backend = "trio" if worker_class == "trio" else "asyncio"
    options = {"use_uvloop": True} if worker_class == "uvloop" else {}
    anyio.run(_serve, settings, worker_class, backend=backend, backend_options=options)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.host is not None:
            settings.host = args.host
        if args.port is not None:
            settings.port = args.port
        _configure_logging(settings)
        serve(settings, args.worker_class)
    except ConfigError as exc:
        print(f"ondoki: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
