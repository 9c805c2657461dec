"""``GET /api/lifecycle`` on a real etcd: the descriptor ``make_app`` was given, or a 503."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from lastbackend.api.app import make_app
from lastbackend.config import Settings
from lastbackend.lifecycle import descriptor as lc
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd


@pytest.fixture
async def lifecycle_api(etcd: RawEtcd, settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    view = lc.view(lc.load())
    client = TestClient(TestServer(make_app(settings, etcd, lifecycle=lambda: view)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def test_get_lifecycle_returns_the_descriptor_lists_and_labels(lifecycle_api) -> None:
    resp = await lifecycle_api.get("/api/lifecycle")
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert set(body) == {"lifecycle", "apis", "expanded", "labels"}
    assert body["lifecycle"] == {"version": "1.0.0"}
    cnb = ["0.7", "0.8", "0.9", "0.10", "0.11", "0.12"]  # what the staging engine implements
    assert body["apis"]["buildpack"] == {"deprecated": [], "supported": cnb}
    assert body["apis"]["platform"] == {"deprecated": [], "supported": ["0.12", "0.13", "0.14"]}
    assert body["expanded"]["buildpack"]["supported"] == cnb
    assert body["expanded"]["buildpack"]["deprecated"] == []
    assert body["expanded"]["platform"]["supported"] == ["0.12", "0.13", "0.14"]
    labels = body["labels"]
    assert labels["io.buildpacks.lifecycle.version"] == "1.0.0"
    assert json.loads(labels["io.buildpacks.lifecycle.apis"]) == body["apis"]
    assert json.loads(labels["io.buildpacks.builder.metadata"]) == {
        "lifecycle": {"version": "1.0.0", "api": {"buildpack": "0.7", "platform": "0.12"}}
    }


async def test_get_lifecycle_needs_a_token_like_any_read(etcd: RawEtcd, settings: Settings) -> None:
    import attrs

    secured = attrs.evolve(settings, admin_tokens=("adm",), read_tokens=("look",))
    view = lc.view(lc.load())
    client = TestClient(TestServer(make_app(secured, etcd, lifecycle=lambda: view)))
    await client.start_server()
    try:
        assert (await client.get("/api/lifecycle")).status == 401
        resp = await client.get("/api/lifecycle", headers={"Authorization": "Bearer look"})
        assert resp.status == 200
    finally:
        await client.close()


async def test_without_a_descriptor_it_is_503_with_the_reason(api) -> None:
    resp = await api.get("/api/lifecycle")
    assert resp.status == 503
    body = await resp.json()
    assert body["errors"][0]["code"] == 10015
    assert "no lifecycle descriptor is loaded" in body["errors"][0]["detail"]


async def test_the_route_is_documented(api) -> None:
    spec = await (await api.get("/openapi.json")).json()
    assert "get" in spec["paths"]["/api/lifecycle"]


async def test_buildpacks_lists_detection_order_and_refused_ones(
    etcd: RawEtcd, settings: Settings, tmp_path: Path
) -> None:
    from lastbackend.lifecycle import buildpacks

    extra = tmp_path / "buildpacks"
    (extra / "go" / "bin").mkdir(parents=True)
    (extra / "go" / "buildpack.toml").write_text(
        'api = "0.10"\n[buildpack]\nid = "example/go"\nversion = "1.0.0"\nname = "Go"\n'
    )
    for script in ("detect", "build"):
        (extra / "go" / "bin" / script).write_text("#!/bin/sh\nexit 0\n")
    (extra / "broken").mkdir()
    (extra / "broken" / "buildpack.toml").write_text("api = \n")
    descriptor = lc.load()
    catalog = lambda: buildpacks.view(buildpacks.discover(extra), descriptor)  # noqa: E731
    client = TestClient(TestServer(make_app(settings, etcd, buildpacks=catalog)))
    await client.start_server()
    try:
        resp = await client.get("/api/buildpacks")
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    finally:
        await client.close()
    ids = [bp["id"] for bp in body["buildpacks"]]
    assert ids[0] == "example/go"  # extras are detected before the built-in ones
    assert ids.index("procfile") < ids.index("static")
    assert [p for p in body["problems"] if "broken" in json.dumps(p)]


async def test_buildpacks_is_503_without_a_catalog(etcd: RawEtcd, settings: Settings) -> None:
    client = TestClient(TestServer(make_app(settings, etcd)))
    await client.start_server()
    try:
        resp = await client.get("/api/buildpacks")
        assert resp.status == 503
        assert "buildpacks_dir" in (await resp.json())["errors"][0]["detail"]
    finally:
        await client.close()


async def test_each_buildpack_says_what_it_detects_as_the_staging_error_does(
    etcd: RawEtcd, settings: Settings, tmp_path: Path
) -> None:
    """``detects``: a buildpack's ``[metadata] detects``, or where to look when it says none,
    word for word what "no buildpack detected" lists; and the OpenAPI document describes it."""
    from lastbackend.lifecycle import buildpacks, staging

    extra = tmp_path / "buildpacks"
    for name, metadata in (("go", '[metadata]\ndetects = "go.mod"\n'), ("silent", "")):
        (extra / name / "bin").mkdir(parents=True)
        (extra / name / "buildpack.toml").write_text(
            f'api = "0.10"\n[buildpack]\nid = "example/{name}"\nversion = "1.0.0"\n'
            f'name = "{name}"\n{metadata}'
        )
        for script in ("detect", "build"):
            (extra / name / "bin" / script).write_text("#!/bin/sh\nexit 100\n")
    descriptor = lc.load()
    found = buildpacks.discover(extra)
    client = TestClient(
        TestServer(make_app(settings, etcd, buildpacks=lambda: buildpacks.view(found, descriptor)))
    )
    await client.start_server()
    try:
        resp = await client.get("/api/buildpacks")
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        spec = await (await client.get("/openapi.json")).json()
    finally:
        await client.close()
    detects = {bp["id"]: bp["detects"] for bp in body["buildpacks"]}
    assert detects == {
        "example/go": "go.mod",
        "example/silent": "see its bin/detect",
        "python": "requirements.txt, pyproject.toml or setup.py",
        "node": "package.json",
        "procfile": "a Procfile",
        "static": "index.html or a Staticfile",
    }
    error = staging.nothing_detected(found, {})
    for bp_id, words in detects.items():
        assert f"{bp_id}: {words}" in error

    ok = spec["paths"]["/api/buildpacks"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Buildpacks"
    }
    item = spec["components"]["schemas"]["Buildpacks"]["properties"]["buildpacks"]["items"]
    assert item["properties"]["detects"]["type"] == "string"
    assert "detects" in item["required"]
    for bp in body["buildpacks"]:  # the answer has exactly the documented fields
        assert set(bp) == set(item["properties"])
