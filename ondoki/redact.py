"""Keep secrets out of logs, errors and status output."""

from __future__ import annotations

from urllib.parse import urlsplit


def redact_url(url: str) -> str:
    """`url` with its password (and any `password=` query value) replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if sep else f"{userinfo}@{hostport}"
    query = "&".join(
        f"{name}=***" if name.lower() == "password" else f"{name}{sep}{value}"
        for name, sep, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    # Built by hand: urlunsplit turns "unix:///path" into "unix:/path".
    return (
        f"{parts.scheme}://{netloc}{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )
