"""Schemathesis against a live `ondoki serve`: generated requests, with the API key and with a
session, get no 5xx and no response that breaks the published schema."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ondoki_adapters.web.openapi import OPERATIONS
from tests.e2e.conftest import Start
from tests.e2e.ws import login

pytestmark = pytest.mark.e2e

KEY = "e2e-api-key-0123456789abcdef"
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


def schemathesis(
    workdir: Path, url: str, token: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{url}/openapi.json",
        "--checks", CHECKS,
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", "15",  # bounded: the suite runs on busy 2-core machines
        "--workers", "1",
        "--request-timeout", "20",
        "--header", f"Authorization: Bearer {token}",
        *extra,
    ]  # fmt: skip
    # Run in a scratch directory: schemathesis keeps its example database in the cwd.
    return subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.parametrize("credential", ["api_key", "session"])
def test_generated_requests_break_nothing(start: Start, credential: str, tmp_path: Path) -> None:
    # Schemathesis sends wrong keys on purpose: a throttle would leave the routes untested.
    server = start(ONDOKI_API_KEY=KEY, ONDOKI_API_KEY_FAILURE_LIMIT="100000").wait_ready()
    token = KEY if credential == "api_key" else login(server.url, KEY, "alice")
    # Logging out would leave the rest of the session run nothing but 401s.
    extra = ("--exclude-name", "DELETE /sessions/me") if credential == "session" else ()
    run = schemathesis(tmp_path, server.url, token, *extra)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    # Schemathesis leaves out the schema's own URL, /openapi.json.
    tested = len(OPERATIONS) - 1 - (1 if extra else 0)
    assert re.search(rf"Tested: {tested}\b", report), report
    assert " failed" not in report.split("Test cases:", 1)[-1], report
