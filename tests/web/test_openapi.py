"""The OpenAPI document covers every route of the app, and the docs page works offline."""

from __future__ import annotations

import re

from starlette.routing import Route, WebSocketRoute

from ondoki_adapters.web.openapi import OPERATIONS
from tests.web.conftest import Api


def test_every_route_of_the_app_is_in_the_schema(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    served: set[tuple[str, str]] = set()
    for route in api.client.app.routes:  # type: ignore[attr-defined]
        if isinstance(route, WebSocketRoute):
            served.add((route.path, "get"))
            continue
        assert isinstance(route, Route), route
        for method in route.methods or ():
            if method != "HEAD":  # Starlette adds HEAD to every GET
                served.add((route.path, method.lower()))
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert served - documented == set(), "routes missing from the schema"
    assert documented - served == set(), "schema operations without a route"
    assert {op.key for op in OPERATIONS} == documented


def test_every_operation_documents_its_errors_in_one_shape(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    assert set(document["components"]["schemas"]["ErrorBody"]["required"]) == {"error"}
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            statuses = {int(s) for s in op["responses"]}
            assert any(s < 400 for s in statuses), (method, path)
            if op["security"]:
                assert 401 in statuses, (method, path)
            for status, response in op["responses"].items():
                if int(status) >= 400 and path != "/readyz":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}
            if "requestBody" in op:
                assert op["requestBody"]["content"], (method, path)


def test_request_and_response_schemas_come_from_the_models(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    create = document["paths"]["/internal/sessions"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert schemas[body["$ref"].rsplit("/", 1)[1]]["required"] == ["user_id"]
    created = create["responses"]["201"]["content"]["application/json"]["schema"]
    props = schemas[created["$ref"].rsplit("/", 1)[1]]["properties"]
    assert props["expires_at"] == {"type": "string", "format": "date-time"}
    assert "JobView" in schemas and "GuideView" in schemas


def test_the_docs_page_loads_only_its_own_assets(api: Api) -> None:
    page = api.client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert urls and all(url.startswith("/docs/assets/") for url in urls), urls
    assert "/openapi.json" in page.text
    for url in urls:
        asset = api.client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url
    bundle = api.client.get("/docs/assets/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in bundle
    missing = api.client.get("/docs/assets/..%2Fcore.py")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_a_plain_request_to_the_websocket_path_is_told_to_upgrade(api: Api) -> None:
    response = api.client.get("/ws")
    assert response.status_code == 426
    assert response.json()["error"]["code"] == "upgrade_required"
