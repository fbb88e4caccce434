"""`/internal/admin/*`: the JSON the operators' dashboard (`/admin`) reads, behind the API
key. Every route answers with what one instance can see now; the dashboard polls them."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ondoki.domain.imports import public
from ondoki_adapters.web.auth import require_api_key, services
from ondoki_adapters.web.http import json_response, query_limit


async def queues(request: Request) -> Response:
    """Per queue: jobs waiting, waiting out a backoff, the oldest's age in seconds; and the
    counts per state the backend keeps."""
    require_api_key(request)
    return json_response(await services(request).jobs.stats())


async def workers(request: Request) -> Response:
    """Registered workers, live first, each with the jobs it runs (stage, progress)."""
    require_api_key(request)
    found = await services(request).jobs.workers()
    return json_response({"workers": found, "now": time.time()})


async def dead(request: Request) -> Response:
    """Dead jobs, newest first, with their error (`?limit=`, 50)."""
    require_api_key(request)
    records = await services(request).jobs.dead(limit=query_limit(request, 50, 1000))
    return json_response({"jobs": [public(record) for record in records]})


async def failures(request: Request) -> Response:
    """The most recent failed attempts, newest first (`?limit=`, 20)."""
    require_api_key(request)
    records = await services(request).jobs.failures(limit=query_limit(request, 20, 100))
    return json_response({"jobs": [public(record) for record in records]})


async def retry(request: Request) -> Response:
    """Queue a dead job again with fresh attempts: 202 with its record, 409 if not dead."""
    require_api_key(request)
    record = await services(request).jobs.retry(request.path_params["job_id"])
    return json_response(public(record), 202)


routes = [
    Route("/internal/admin/queues", queues, methods=["GET"]),
    Route("/internal/admin/workers", workers, methods=["GET"]),
    Route("/internal/admin/jobs/dead", dead, methods=["GET"]),
    Route("/internal/admin/jobs/failures", failures, methods=["GET"]),
    Route("/internal/admin/jobs/{job_id}/retry", retry, methods=["POST"]),
]
