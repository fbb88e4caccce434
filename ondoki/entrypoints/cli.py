"""The `ondoki` command: serve the API, run the media worker, check the Redis setup."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio

from ondoki.entrypoints.services import Services
from ondoki.errors import ConfigError
from ondoki.support.settings import Settings, load_settings

WORKER_CLASSES = ("asyncio", "uvloop", "trio")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ondoki", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the HTTP and WebSocket API with hypercorn")
    serve.add_argument("--host", help="address to bind (default: ONDOKI_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: ONDOKI_PORT or 8000)")
    serve.add_argument("--worker-class", choices=WORKER_CLASSES, default="asyncio")
    worker = commands.add_parser("worker", help="run the media worker (concurrency 1)")
    worker.add_argument(
        "--queues",
        default="celery,media",
        help="comma-separated queues to consume (default: celery,media)",
    )
    doctor = commands.add_parser("doctor", help="check the configured Redis servers")
    doctor.add_argument("--json", action="store_true", help="machine-readable findings")
    return parser


def _configure_logging(settings: Settings) -> None:
    from ondoki.support.logs import configure_logging, secrets_of

    urls = (settings.redis_url, settings.broker_url, settings.result_backend)
    configure_logging(settings.log_level, secrets_of(urls, settings.api_key))


async def _serve(settings: Settings, worker_class: str) -> None:
    from hypercorn.config import Config

    from ondoki.entrypoints.bootstrap import open_services, resolve_api_key
    from ondoki_adapters.web.app import create_app

    api_key = resolve_api_key(settings)
    opened: list[Services] = []

    @asynccontextmanager
    async def services() -> AsyncIterator[Services]:
        async with open_services(settings, api_key=api_key) as found:
            opened.append(found)
            yield found

    app = create_app(services)
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.graceful_timeout = settings.shutdown_grace_seconds
    config.accesslog = None
    config.websocket_max_message_size = settings.ws_max_message_bytes
    config.errorlog = logging.getLogger("hypercorn.error")

    stop = anyio.Event()

    async def watch_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logging.getLogger("ondoki").info(
                    "received %s, shutting down", signal.Signals(signum).name
                )
                # WebSockets never finish on their own: close them (1012, "reconnect
                # elsewhere") before hypercorn waits for open connections to end.
                for found in opened:
                    found.notifications.close_all()
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
    backend = "trio" if worker_class == "trio" else "asyncio"
    options = {"use_uvloop": True} if worker_class == "uvloop" else {}
    anyio.run(_serve, settings, worker_class, backend=backend, backend_options=options)


def doctor(settings: Settings, as_json: bool) -> int:
    from ondoki_adapters.redis.doctor import diagnose, render, to_json

    findings = anyio.run(diagnose, settings)
    if as_json:
        sys.stdout.write(to_json(findings).decode() + "\n")
    else:
        print(render(findings))
    return 1 if any(f.severity == "error" for f in findings) else 0


def _config_error(exc: BaseException | None, depth: int = 0) -> ConfigError | None:
    if exc is None or depth > 8:
        return None
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _config_error(inner, depth + 1)
            if found is not None:
                return found
    return _config_error(exc.__cause__ or exc.__context__, depth + 1)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "doctor":
            return doctor(settings, args.json)
        if args.command == "worker":
            _configure_logging(settings)
            queues = tuple(q.strip() for q in args.queues.split(",") if q.strip())
            if not queues:
                raise ConfigError("--queues", "name at least one queue")
            from ondoki.entrypoints.bootstrap import run_worker

            anyio.run(run_worker, settings, queues)
            return 0
        if args.host is not None:
            settings.host = args.host
        if args.port is not None:
            settings.port = args.port
        _configure_logging(settings)
        serve(settings, args.worker_class)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        # A ConfigError raised inside the app's lifespan or a task group arrives wrapped
        # (ExceptionGroup, hypercorn's LifespanFailureError): still one line, exit 2.
        config = _config_error(exc)
        if config is None:
            raise
        print(f"ondoki: configuration error: {config}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
