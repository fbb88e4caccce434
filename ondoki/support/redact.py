"""Keep secrets out of logs, errors and status output."""

from __future__ import annotations

import re

_QUERY_PASSWORD = re.compile(r"(?i)((?:^|&)password=)[^&]*")


def url_password(url: str) -> str | None:
    """The password in `url`'s userinfo, read as text: a password with an unencoded "/" or
    "#" breaks `urlsplit`, and must still be found to be hidden."""
    _, sep, rest = url.partition("://")
    main = rest.partition("?")[0]
    at = main.rfind("@")
    if not sep or at < 0:
        return None
    _, colon, password = main[:at].partition(":")
    return password if colon and password else None


def redact_url(url: str) -> str:
    """`url` with its password (and any `password=` query value) replaced by `***`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<not a URL>"
    main, qmark, query = rest.partition("?")
    at = main.rfind("@")
    if at >= 0:
        user, colon, _ = main[:at].partition(":")
        main = (f"{user}:***" if colon else user) + main[at:]
    query = _QUERY_PASSWORD.sub(r"\1***", query)
    return f"{scheme}://{main}{qmark}{query}"
