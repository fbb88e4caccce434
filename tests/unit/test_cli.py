"""The `ondoki` command's own behaviour, run in process: version, help, and the one-line
answers to mistakes (a port in use or out of range, a misspelt variable)."""

from __future__ import annotations

import os
import socket

import pytest

from ondoki.entrypoints.cli import main
from ondoki.support.settings import unknown_variables


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("ONDOKI_", "REDIS_URL", "CELERY_")):
            monkeypatch.delenv(name)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == "ondoki 0.1.0"


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("serve", ["HTTP", "REDIS_URL", "ONDOKI_API_KEY"]),
        ("worker", ["Redis broker", "REDIS_URL", "SIGTERM", "--metrics-port"]),
        ("doctor", ["REDIS_URL", "CELERY_BROKER_URL", "Exit status 1"]),
    ],
)
def test_each_command_says_what_it_does_and_needs(
    capsys: pytest.CaptureFixture[str], command: str, words: list[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for word in words:
        assert word in text, (command, word)


def test_serve_on_a_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--host", "127.0.0.1", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err == f"ondoki: cannot serve on 127.0.0.1:{port}: the address is already in use\n"


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_serve_on_a_port_out_of_range_is_one_line(
    capsys: pytest.CaptureFixture[str], port: str
) -> None:
    # Refused like any bad setting before anything is bound: one line naming the flag, exit 2.
    assert main(["serve", "--port", port]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ondoki: configuration error: --port: ")
    assert err.count("\n") == 1


def test_serve_on_an_unknown_host_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "no-such-host.invalid", "--port", "8000"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ondoki: cannot serve on no-such-host.invalid:8000: unknown host")
    assert err.count("\n") == 1


def test_a_misspelt_variable_is_warned_about_with_the_closest_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert unknown_variables({"ONDOKI_WORKER_METRIC_PORT": "1", "ONDOKI_PORT": "1"}) == [
        "ONDOKI_WORKER_METRIC_PORT is not a setting and is ignored; "
        "did you mean ONDOKI_WORKER_METRICS_PORT?"
    ]
    assert unknown_variables({"ONDOKI_ZZZ": "1", "OTHER": "x", "ONDOKI_CONFIG": "c"}) == [
        "ONDOKI_ZZZ is not a setting and is ignored"
    ]
    monkeypatch.setenv("ONDOKI_LOGLEVEL", "debug")
    assert main(["doctor", "--json"]) == 0
    err = capsys.readouterr().err
    assert err == (
        "ondoki: warning: ONDOKI_LOGLEVEL is not a setting and is ignored; "
        "did you mean ONDOKI_LOG_LEVEL?\n"
    )
