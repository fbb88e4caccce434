"""Request bodies no JSON decoder should have to read: invalid UTF-8, nesting past the
decoder's depth, and arbitrary bytes. Each answers a 4xx in the error shape and logs one
access line, never a 500 with a traceback."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.web.conftest import Api
from tests.web.test_api import error_of

# Deeper than Python's recursion limit (1000), and under the fixture's 1 KiB state limit:
# the decoder gives up before it would reach the missing closing brackets.
DEEP_IN_FIELD = b'{"data": {"x": ' + b"[" * 1000
BAD_UTF8 = b'{"user_id": "al\xffice"}'
TRUNCATED_UTF8 = b'{"user_id": "alice", "data": {"k": "\xe2\x82"}}'


def _post_session(api: Api, body: bytes) -> object:
    return api.client.post(
        "/internal/sessions",
        content=body,
        headers={**api.internal, "Content-Type": "application/json"},
    )


@pytest.mark.parametrize("body", [BAD_UTF8, TRUNCATED_UTF8, DEEP_IN_FIELD])
def test_bodies_the_decoder_refuses_are_400_on_every_json_endpoint(
    api: Api, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    alice = api.login("alice")
    json_type = {"Content-Type": "application/json"}
    responses = [
        api.client.post("/internal/sessions", content=body, headers={**api.internal, **json_type}),
        api.client.post(
            "/internal/notifications", content=body, headers={**api.internal, **json_type}
        ),
        api.client.put("/state/k", content=body, headers={**alice, **json_type}),
    ]
    for response in responses:
        error = error_of(response, 400)
        assert error["code"] == "malformed_body"
        assert "JSON" in error["message"]
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert api.client.get("/state/k", headers=alice).status_code == 404


def test_deep_but_allowed_nesting_is_still_stored(api: Api) -> None:
    alice = api.login("alice")
    body = b"[" * 100 + b"]" * 100
    assert api.client.put("/state/k", content=body, headers=alice).status_code == 200
    assert api.client.get("/state/k", headers=alice).content == body


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        # Near-JSON: valid documents with bytes spliced in, where decoders break.
        st.builds(
            lambda doc, cut, junk: doc[:cut] + junk + doc[cut:],
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3)
                ),
                max_leaves=12,
            ).map(lambda value: json.dumps({"user_id": "u", "type": "t", "data": value}).encode()),
            st.integers(min_value=0, max_value=400),
            st.binary(min_size=1, max_size=6),
        ),
        st.integers(min_value=1, max_value=3000).map(lambda n: b'{"data":' + b"[" * n),
    )
)
def test_whatever_the_bytes_a_json_body_gets_a_4xx_or_success(api: Api, body: bytes) -> None:
    json_type = {"Content-Type": "application/json"}
    session = api.login("fuzz")
    for response in (
        api.client.post("/internal/sessions", content=body, headers={**api.internal, **json_type}),
        api.client.post(
            "/internal/notifications", content=body, headers={**api.internal, **json_type}
        ),
        api.client.put("/state/k", content=body, headers={**session, **json_type}),
    ):
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            error_of(response, response.status_code)
