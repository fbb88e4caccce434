"""`python -m tests.bench section:part,part`: what the bench's argument means, and the error
it gives for a section or part it does not have (before any server starts)."""

from __future__ import annotations

import pytest

from tests.bench.__main__ import parse_section
from tests.bench.notifications import PARTS


def test_a_section_alone_runs_whole() -> None:
    assert parse_section("cache") == ("cache", {})
    assert parse_section("notifications") == ("notifications", {})


def test_parts_are_passed_in_the_order_given() -> None:
    assert parse_section("notifications:steady,fanout") == (
        "notifications",
        {"parts": ["steady", "fanout"]},
    )


def test_every_notifications_part_is_accepted() -> None:
    assert parse_section("notifications:" + ",".join(PARTS)) == (
        "notifications",
        {"parts": list(PARTS)},
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("nope", "unknown section 'nope'"),
        ("nope:steady", "unknown section 'nope'"),
        ("notifications:stedy", "unknown part(s) stedy of notifications"),
        ("notifications:steady,", "an empty part in 'notifications:steady,'"),
        ("notifications:", "an empty part in 'notifications:'"),
        ("cache:steady", "unknown part(s) steady of cache: none"),  # cache has no parts
    ],
)
def test_an_unknown_section_or_part_is_named(text: str, named: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_section(text)
    assert named in str(caught.value)
