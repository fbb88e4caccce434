"""`/internal/admin/*`: the JSON the operators' dashboard (`/admin`) reads, behind the API
key. Every route answers with what one instance can see now; the dashboard polls them."""

from __future__ import annotations

import time
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from ondoki.domain.job_view import job_view
from ondoki.errors import NotFound
from ondoki_adapters.web.auth import require_api_key, services
from ondoki_adapters.web.http import json_response, query_limit


async def queues(request: Request) -> Response:
    """Per queue: jobs waiting, waiting out a backoff, the oldest's age in seconds; and the
    counts per state the backend keeps."""
    require_api_key(request)
    return json_response(await services(request).jobs.stats())


async def workers(request: Request) -> Response:
    """Registered workers, live first, each with the jobs it runs; a live worker's jobs
    carry the stage and progress of their records now (the registry has them as of the
    worker's last heartbeat)."""
    require_api_key(request)
    queue = services(request).jobs
    found = await queue.workers()
    for worker in found:
        if not worker.alive:
            continue
        for job in worker.jobs:
            try:
                record = await queue.get(job.job_id)
            except NotFound:
                continue
            if record.state == "running":
                job.stage, job.progress = record.stage, record.progress
    return json_response({"workers": found, "now": time.time()})


async def dead(request: Request) -> Response:
    """Dead jobs, newest first, with their error (`?limit=`, 50)."""
    require_api_key(request)
    records = await services(request).jobs.dead(limit=query_limit(request, 50, 1000))
    return json_response({"jobs": [job_view(record) for record in records]})


async def failures(request: Request) -> Response:
    """The most recent failed attempts, newest first (`?limit=`, 20)."""
    require_api_key(request)
    records = await services(request).jobs.failures(limit=query_limit(request, 20, 100))
    return json_response({"jobs": [job_view(record) for record in records]})


async def retry(request: Request) -> Response:
    """Queue a dead job again with fresh attempts: 202 with its record, 409 if not dead."""
    require_api_key(request)
    record = await services(request).jobs.retry(request.path_params["job_id"])
    return json_response(job_view(record), 202)


async def instances(request: Request) -> Response:
    """The API instances, live first: open WebSockets and pub/sub health of each."""
    require_api_key(request)
    found = await services(request).jobs.instances()
    return json_response({"instances": found, "now": time.time()})


async def doctor(request: Request) -> Response:
    """The doctor's findings about the configured Redis servers (as `ondoki doctor`)."""
    require_api_key(request)
    diagnose = services(request).diagnose
    findings = [] if diagnose is None else await diagnose()
    return json_response({"findings": findings})


_STATIC = Path(__file__).parent / "admin_static"
#: The dashboard's own files: nothing else is served from the folder.
_ASSETS = {"admin.js": "text/javascript", "admin.css": "text/css"}
#: Everything the page loads comes from this origin; it cannot be framed.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


async def page(request: Request) -> Response:
    """The dashboard (no credentials needed to load it: it asks for the API key, keeps
    it in the tab's sessionStorage and sends it as a bearer header)."""
    return FileResponse(_STATIC / "index.html", media_type="text/html", headers=_PAGE_HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _ASSETS:
        raise NotFound(f"no dashboard asset {name!r}")
    return FileResponse(_STATIC / name, media_type=_ASSETS[name], headers=_PAGE_HEADERS)


routes = [
    Route("/admin", page, methods=["GET"]),
    Route("/admin/static/{name}", asset, methods=["GET"]),
    Route("/internal/admin/instances", instances, methods=["GET"]),
    Route("/internal/admin/doctor", doctor, methods=["GET"]),
    Route("/internal/admin/queues", queues, methods=["GET"]),
    Route("/internal/admin/workers", workers, methods=["GET"]),
    Route("/internal/admin/jobs/dead", dead, methods=["GET"]),
    Route("/internal/admin/jobs/failures", failures, methods=["GET"]),
    Route("/internal/admin/jobs/{job_id}/retry", retry, methods=["POST"]),
]
