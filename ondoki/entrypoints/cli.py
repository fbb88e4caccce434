"""The `ondoki` command: serve the API, run the media worker, check the Redis setup."""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import metadata
from typing import NoReturn

import anyio
import msgspec

from ondoki.entrypoints.services import Services
from ondoki.errors import BackendError, ConfigError
from ondoki.support.settings import Settings, load_settings, unknown_variables

WORKER_CLASSES = ("asyncio", "uvloop", "trio")


class _Parser(argparse.ArgumentParser):
    """Refuses a bad command line the way a bad setting is refused: one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    try:
        return metadata.version("ondoki")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ondoki",
        description=__doc__,
        epilog="Settings come from ONDOKI_* variables and configs/ondoki.toml (see the README).",
    )
    parser.add_argument("--version", action="version", version=f"ondoki {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve the HTTP and WebSocket API with hypercorn",
        description="Serve the HTTP and WebSocket API (and /admin) with hypercorn. Without "
        "REDIS_URL it runs on in-memory adapters and runs the jobs itself; with REDIS_URL "
        "it uses Redis and `ondoki worker` processes run the jobs. Production "
        "(ONDOKI_ENV=production) needs ONDOKI_API_KEY and REDIS_URL.",
    )
    serve.add_argument("--host", help="address to bind (default: ONDOKI_HOST or 127.0.0.1)")
    # Parsed as text and validated with the settings (one line naming the flag, exit 2).
    serve.add_argument("--port", help="port to bind (default: ONDOKI_PORT or 8000)")
    serve.add_argument(
        "--worker-class",
        choices=WORKER_CLASSES,
        default="asyncio",
        help="event loop (default: asyncio; every worker class runs on Redis or in memory)",
    )
    worker = commands.add_parser(
        "worker",
        help="run the job worker (concurrency 1)",
        description="Run jobs (video imports and the rest) from the Redis broker, one at a "
        "time, until SIGTERM or SIGINT (running jobs are given back at their next "
        "checkpoint). Needs REDIS_URL (and CELERY_BROKER_URL if the broker is elsewhere); "
        "progress is published to the users' notification channels.",
    )
    worker.add_argument(
        "--queues",
        default="celery,media",
        help="comma-separated queues to consume (default: celery,media)",
    )
    worker.add_argument(
        "--metrics-port",
        type=_port,
        help="serve Prometheus metrics on this port, on ONDOKI_HOST "
        "(default: ONDOKI_WORKER_METRICS_PORT; unset: none)",
    )
    commands.add_parser(
        "migrate",
        help="create or update the session database's schema (DATABASE_URL)",
        description="Create or update the schema of the session database that DATABASE_URL "
        "names (safe to run on several machines at once). `ondoki serve` refuses to start "
        "while the schema is behind.",
    )
    doctor = commands.add_parser(
        "doctor",
        help="check the configured Redis servers",
        description="Check the Redis servers that REDIS_URL and CELERY_BROKER_URL name: "
        "reachable, version, pub/sub, eviction policy, memory, persistence. Changes "
        "nothing. Exit status 1 when a finding is an error.",
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable findings")
    return parser


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to 65535, got {text!r}")
    return int(text)


def _configure_logging(settings: Settings) -> None:
    from ondoki.support.logs import configure_logging, secrets_of

    urls = (settings.redis_url, settings.broker_url, settings.result_backend, settings.database_url)
    configure_logging(
        settings.log_level, secrets_of(urls, settings.api_key, settings.url_signing_key)
    )


async def _serve(settings: Settings, worker_class: str) -> None:
    from hypercorn.config import Config

    from ondoki.entrypoints.bootstrap import open_services, resolve_api_key
    from ondoki_adapters.web.app import create_app, serve_app

    api_key = resolve_api_key(settings)
    opened: list[Services] = []

    @asynccontextmanager
    async def services() -> AsyncIterator[Services]:
        async with open_services(settings, api_key=api_key) as found:
            opened.append(found)
            freeze_start_up()
            yield found

    app = serve_app(
        create_app(services, cors_origins=settings.cors_origins),
        direct_frames=settings.ws_direct_frames,
    )
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


def freeze_start_up() -> None:
    """Leave what start-up made (modules, the app, the services: some 60,000 objects, kept
    for the life of the process) out of every later garbage collection.

    A full collection walks every tracked object and stops the whole process meanwhile.
    Measured in `ondoki serve` taking 1,000 single-event POSTs a second: one every 15 s or
    so, 41-52 ms over 65,000 objects; frozen, 1.4-3.8 ms over the 4,000 serving made.
    """
    gc.collect()
    gc.freeze()


class CannotServe(Exception):
    """The address to serve on cannot be bound; the message names it."""


def check_address(host: str, port: int) -> None:
    """`CannotServe` unless `host:port` can be bound now (as hypercorn will bind it)."""
    where = f"{host}:{port}"
    if not 0 <= port <= 65535:
        raise CannotServe(f"cannot serve on {where}: the port must be from 0 to 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise CannotServe(f"cannot serve on {where}: unknown host ({exc})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            reason = (
                "the address is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            )
            raise CannotServe(f"cannot serve on {where}: {reason}") from None


def serve(settings: Settings, worker_class: str) -> None:
    from ondoki.entrypoints.bootstrap import check_backend

    check_address(settings.host, settings.port)
    backend = "trio" if worker_class == "trio" else "asyncio"
    # Checked before anything starts, so a refusal is one line, not a failed lifespan.
    check_backend(settings)
    options = {"use_uvloop": True} if worker_class == "uvloop" else {}
    anyio.run(_serve, settings, worker_class, backend=backend, backend_options=options)


def migrate(settings: Settings) -> int:
    from ondoki.entrypoints.bootstrap import migrate_sessions

    try:
        before, after = anyio.run(migrate_sessions, settings)
    except BackendError as exc:
        print(f"ondoki: migrate failed: {exc}", file=sys.stderr)
        return 1
    if before == after:
        print(f"ondoki: the session database's schema is current (version {after})")
    else:
        print(f"ondoki: migrated the session database's schema from version {before} to {after}")
    return 0


def doctor(settings: Settings, as_json: bool) -> int:
    from ondoki_adapters.postgres.doctor import diagnose as diagnose_database
    from ondoki_adapters.redis.doctor import Finding, diagnose, render, to_json

    findings = anyio.run(diagnose, settings)
    findings += [
        Finding(**msgspec.structs.asdict(found)) for found in anyio.run(diagnose_database, settings)
    ]
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
    for warning in unknown_variables(os.environ):
        print(f"ondoki: warning: {warning}", file=sys.stderr)
    try:
        flags = {"host": args.host, "port": args.port} if args.command == "serve" else {}
        settings = load_settings(flags=flags)
        if args.command == "doctor":
            return doctor(settings, args.json)
        if args.command == "migrate":
            _configure_logging(settings)
            return migrate(settings)
        if args.command == "worker":
            if args.metrics_port is not None:
                settings.worker_metrics_port = args.metrics_port
            _configure_logging(settings)
            queues = tuple(q.strip() for q in args.queues.split(",") if q.strip())
            if not queues:
                raise ConfigError("--queues", "name at least one queue")
            from ondoki.entrypoints.bootstrap import run_worker

            anyio.run(run_worker, settings, queues)
            return 0
        _configure_logging(settings)
        serve(settings, args.worker_class)
    except KeyboardInterrupt:
        return 130
    except CannotServe as exc:
        print(f"ondoki: {exc}", file=sys.stderr)
        return 1
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
