"""The media adapters as the composition root wires them, for the media tests."""

from __future__ import annotations

from typing import Any

from ondoki.entrypoints.bootstrap import build_importer
from ondoki.ports.jobs import JobContext
from ondoki.support.settings import Settings
from ondoki_adapters.media import PyAVDecoder

#: The decoder a deployment uses, with its default scene options.
DECODER = PyAVDecoder()


def run_import(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """The `media.import` job as a deployment with default settings runs it."""
    return build_importer(Settings())(ctx, payload)
