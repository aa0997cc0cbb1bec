"""docs/openapi.yaml is the truth about the HTTP API: every route the app serves is described (and
nothing else), every reference resolves, every error answer is the shared JSON error, and the
running server publishes the same document at GET /openapi.json."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import yaml

from bot.app import create_app
from bot.config import ROOT
from tests.conftest import make_config, start_server

SPEC = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text(encoding="utf-8"))
METHODS = {"get", "post", "put", "patch", "delete", "options"}
EVERYTHING_ON = {  # every channel and API, so every route exists
    "admin.token": "openapi-admin-token",
    "web.session_secret": "openapi-web-secret-0123456789",
    "wecom.corp_id": "wwopenapi0123456", "wecom.token": "t", "wecom.aes_key": "a" * 43,
    "wecom.secret": "s", "wecom.agent_id": 1000002,
    "wecom.aibot_token": "t2", "wecom.aibot_aes_key": "b" * 43,
    "dingtalk.app_key": "k", "dingtalk.app_secret": "s",
}


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def target(ref: str) -> Any:
    node: Any = SPEC
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_the_description_is_openapi_3_1_and_every_reference_resolves() -> None:
    assert SPEC["openapi"].startswith("3.1")
    for ref in refs(SPEC):
        assert ref.startswith("#/"), ref
        target(ref)  # KeyError names a dangling reference


def test_every_operation_has_an_id_and_json_errors() -> None:
    ids = []
    for path, item in SPEC["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            ids.append(op["operationId"])
            for status, response in op["responses"].items():
                if int(status) < 400 or op["operationId"] == "readyz":  # its 503 is the readiness report
                    continue
                answer = target(response["$ref"]) if "$ref" in response else response
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (path, method, status)
    assert len(ids) == len(set(ids))


def test_the_description_names_every_route_the_app_serves() -> None:
    app = create_app(make_config(EVERYTHING_ON))
    served = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.resource is not None and r.method not in ("HEAD", "OPTIONS")}
    described = {(m, path) for path, item in SPEC["paths"].items() for m in item if m in METHODS - {"options"}}
    assert served == described
    preflights = {r.resource.canonical for r in app.router.routes() if r.method == "OPTIONS" and r.resource}
    assert preflights and all(p.startswith("/api/web/") for p in preflights)  # described once, on the session


async def test_the_server_publishes_the_description() -> None:
    server = await start_server(make_config())
    try:
        async with aiohttp.ClientSession() as http, http.get(server.make_url("/openapi.json")) as r:
            assert r.status == 200 and r.content_type == "application/json"
            assert await r.json() == SPEC
    finally:
        await server.close()
