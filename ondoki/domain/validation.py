"""Checks on identifiers that end up in cache keys and channel names."""

from __future__ import annotations

import math
import re

from ondoki.errors import InvalidInput

_USER_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def user_id(value: str) -> str:
    """`value` if it is a valid user ID; raise `InvalidInput` naming the rule otherwise."""
    if not _USER_ID.fullmatch(value):
        raise InvalidInput(
            "user_id must be 1-128 characters of letters, digits and . _ : @ -", field="user_id"
        )
    return value


def state_key(value: str) -> str:
    """`value` if it is a valid temporary-state key."""
    if not _KEY.fullmatch(value):
        raise InvalidInput("state key must be 1-128 characters of letters, digits and . _ : -")
    return value


def ttl(value: float, *, maximum: float, name: str = "ttl_seconds") -> float:
    """`value` if it is a positive, finite number of seconds no larger than `maximum`."""
    if not (value > 0 and value <= maximum and math.isfinite(value)):
        raise InvalidInput(f"{name} must be more than 0 and at most {maximum:g}", field=name)
    return value
