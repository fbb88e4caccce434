"""The JavaScript client (clients/js) under Node's test runner, against a real `ondoki serve`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Start

pytestmark = pytest.mark.e2e

KEY = "e2e-api-key-0123456789abcdef"
CLIENT = Path(__file__).parents[2] / "clients" / "js"


def node_ready() -> str:
    node = shutil.which("node")
    assert node is not None, "Node.js 20 or newer is needed (apt-get install nodejs npm)"
    assert (CLIENT / "node_modules" / "ws").is_dir(), "run `npm ci` in clients/js first"
    return node


def test_node_test_runner_against_ondoki_serve(start: Start) -> None:
    node = node_ready()
    # Fast pings, so the test sees the client answer several within seconds.
    server = start(
        ONDOKI_API_KEY=KEY,
        ONDOKI_WS_PING_INTERVAL_SECONDS="0.3",
        ONDOKI_WS_PING_TIMEOUT_SECONDS="1",
    ).wait_ready()
    run = subprocess.run(
        [node, "--test", "--test-reporter=tap", "test/"],
        cwd=CLIENT,
        env={"PATH": "/usr/bin:/bin", "ONDOKI_URL": server.url, "ONDOKI_API_KEY": KEY},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    passed = re.search(r"^# pass (\d+)$", report, re.MULTILINE)
    assert passed is not None and int(passed.group(1)) >= 20, report
    assert "\n# fail 0\n" in report, report
