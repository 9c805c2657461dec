"""``/v3/droplets`` against a real etcd: creating a droplet for each package and lifecycle pair
(mismatches refused with nothing written), the view, lists, deletes, the app cascade, and the
staging log read and followed while the test plays the staging controller (appending to the
blob log and moving the droplet's state in etcd)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from lastbackend import codec
from lastbackend.model.apps import (
    BuildpackStagingResponse,
    DockerLifecycle,
    Droplet,
    Hash,
)
from lastbackend.model.common import now
from lastbackend.store import keys
from tests.conftest import ClientFactory, dump
from tests.integration.test_packages import (
    SITE,
    Recorder,
    create,
    details,
    form,
    make_app,
    revision,
    upload,
    zip_of,
)
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

BUILDPACK = {"type": "buildpack", "data": {"buildpack": None, "stack": None}}
DOCKER = {"type": "docker", "data": {"use_caching": False}}


@pytest.fixture
async def api(make_client: ClientFactory, tmp_path: Path) -> Recorder:
    """Streams (followed logs) go through ``api.client``: the recorder reads bodies whole."""
    return Recorder(await make_client(data_dir=tmp_path))


async def ready_bits(api: Recorder, app: str) -> str:
    guid = str((await create(api, app))["guid"])
    await upload(api, guid, zip_of(SITE))
    return guid


async def stage(api: Recorder, package: str, body: Any = None, expect: int = 201) -> Any:
    kwargs = {} if body is None else {"json": body}
    return await api.call("POST", f"/v3/packages/{package}/droplets", expect, **kwargs)


async def set_droplet(etcd: RawEtcd, pid: str, app: str, guid: str, **changes: Any) -> None:
    """Change a droplet in etcd as the staging controller would."""
    key = keys.droplet(pid, app, guid)
    kv = await etcd.get(key)
    assert kv is not None
    droplet = codec.loads(kv.value, Droplet)
    await etcd.put(key, codec.dumps(attrs.evolve(droplet, **{"updated": now(), **changes})))


# creating ----------------------------------------------------------------------------------------


async def test_droplet_of_bits_defaults_to_buildpack(api: Recorder, etcd: RawEtcd) -> None:
    pid, app = await make_app(api)
    package = await ready_bits(api, app)
    resp = await api.request(
        "POST", f"/v3/packages/{package}/droplets", json={"environment_variables": {"cloud": "x"}}
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    guid = body["guid"]
    assert resp.headers["Location"] == f"/v3/droplets/{guid}"
    assert set(body) == {
        "guid",
        "state",
        "error",
        "lifecycle",
        "environment_variables",
        "staging_response",
        "image",
        "created_at",
        "updated_at",
        "links",
    }
    assert body["state"] == "PENDING"
    assert body["error"] is None
    assert body["lifecycle"] == BUILDPACK
    assert body["environment_variables"] == {"cloud": "x"}
    assert body["staging_response"] is None
    assert body["image"] is None
    assert body["links"] == {
        "self": {"href": f"/v3/droplets/{guid}"},
        "package": {"href": f"/v3/packages/{package}"},
        "app": {"href": f"/v3/apps/{app}"},
        "logs": {"href": f"/v3/droplets/{guid}/logs"},
        "assign_current_droplet": {
            "href": f"/v3/apps/{app}/relationships/current_droplet",
            "method": "PATCH",
        },
    }
    raw = await dump(etcd)
    assert raw[keys.droplet_owner(guid)] == f"{pid}:{app}".encode()
    stored = json.loads(raw[keys.droplet(pid, app, guid)])
    assert stored["package"] == package
    assert stored["state"] == "PENDING"
    assert await api.call("GET", f"/v3/droplets/{guid}") == body
    # An empty body is the same as {}.
    assert (await stage(api, package))["lifecycle"] == BUILDPACK


async def test_request_lifecycle_is_kept(api: Recorder) -> None:
    _, app = await make_app(api)
    package = await ready_bits(api, app)
    lifecycle = {"type": "buildpack", "data": {"buildpack": "static", "stack": "cflinuxfs2"}}
    body = await stage(api, package, {"lifecycle": lifecycle})
    assert body["lifecycle"] == lifecycle


@pytest.mark.parametrize(
    ("kind", "fields", "lifecycle", "ok"),
    [
        ("bits", {}, None, True),
        ("bits", {}, BUILDPACK, True),
        ("bits", {}, DOCKER, False),
        ("git", {"url": "https://example.com/r.git:main"}, None, True),
        ("git", {"url": "https://example.com/r.git"}, BUILDPACK, True),
        ("git", {"url": "https://example.com/r.git"}, DOCKER, False),
        ("docker", {"image": "busybox"}, DOCKER, True),
        ("docker", {"image": "busybox"}, BUILDPACK, False),
        ("docker", {"image": "busybox"}, None, False),  # the default lifecycle is buildpack
    ],
)
async def test_package_and_lifecycle_pairs(
    api: Recorder,
    etcd: RawEtcd,
    kind: str,
    fields: dict[str, Any],
    lifecycle: dict[str, Any] | None,
    ok: bool,
) -> None:
    _, app = await make_app(api)
    if kind == "bits":
        package = await ready_bits(api, app)
    else:
        package = (await create(api, app, kind, **fields))["guid"]
    body = {} if lifecycle is None else {"lifecycle": lifecycle}
    before = await revision(etcd)
    resp = await api.request("POST", f"/v3/packages/{package}/droplets", json=body)
    if ok:
        assert resp.status == 201, await resp.text()
        droplet = await resp.json()
        assert droplet["lifecycle"]["type"] == (lifecycle or BUILDPACK)["type"]
        return
    assert resp.status == 422, await resp.text()
    text = details(await resp.json())
    assert text.startswith("lifecycle.type: ")
    needed = "docker" if kind == "docker" else "buildpack"
    assert f"a {kind} package is staged by the {needed} lifecycle" in text
    assert await revision(etcd) == before
    assert (await api.call("GET", "/v3/droplets"))["resources"] == []


async def test_the_apps_lifecycle_is_used(api: Recorder, etcd: RawEtcd) -> None:
    pid, app = await make_app(api)
    docker_lifecycle = DockerLifecycle()
    await etcd.put(keys.service_part(pid, app, "lifecycle"), codec.dumps(docker_lifecycle))
    docker = (await create(api, app, "docker", image="busybox"))["guid"]
    body = await stage(api, docker)
    assert body["lifecycle"] == codec.unstructure(docker_lifecycle)
    bits = await ready_bits(api, app)
    before = await revision(etcd)
    resp = await api.request("POST", f"/v3/packages/{bits}/droplets", json={})
    assert resp.status == 422
    text = details(await resp.json())
    assert "lifecycle.type: a bits package is staged by the buildpack lifecycle" in text
    assert "the app's lifecycle" in text
    assert await revision(etcd) == before
    # The request overrides the app's lifecycle.
    assert (await stage(api, bits, {"lifecycle": BUILDPACK}))["lifecycle"] == BUILDPACK


@pytest.mark.parametrize("state", ["AWAITING_UPLOAD", "FAILED"])
async def test_package_must_be_ready(api: Recorder, etcd: RawEtcd, state: str) -> None:
    _, app = await make_app(api)
    package = (await create(api, app))["guid"]
    if state == "FAILED":
        await api.call("POST", f"/v3/packages/{package}/upload", 422, data=form(b"not a zip"))
    before = await revision(etcd)
    resp = await api.request("POST", f"/v3/packages/{package}/droplets", json={})
    assert resp.status == 422
    assert f"package: is {state}; only a READY package can be staged" in details(await resp.json())
    assert await revision(etcd) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"environment_variables": {"1bad": "x"}}, "environment_variables"),
        ({"environment_variables": {"A": 1}}, "environment_variables"),
        ({"lifecycle": {"type": "heroku"}}, "lifecycle.type"),
        ({"lifecycle": {"type": "docker", "data": {"use_caching": "yes"}}}, "use_caching"),
        ({"surprise": True}, "surprise"),
        ([], "body"),
    ],
)
async def test_bad_bodies_write_nothing(
    api: Recorder, etcd: RawEtcd, body: Any, field: str
) -> None:
    _, app = await make_app(api)
    package = await ready_bits(api, app)
    before = await revision(etcd)
    resp = await api.request("POST", f"/v3/packages/{package}/droplets", json=body)
    assert resp.status == 422, await resp.text()
    assert field in details(await resp.json())
    assert await revision(etcd) == before


async def test_unknown_package_or_droplet(api: Recorder) -> None:
    missing = "0b3a2f2e-8f5e-4a4b-9a55-5d0b7f7a1c11"
    for method, path in (
        ("POST", f"/v3/packages/{missing}/droplets"),
        ("GET", f"/v3/packages/{missing}/droplets"),
        ("GET", f"/v3/droplets/{missing}"),
        ("GET", f"/v3/droplets/{missing}/logs"),
        ("GET", "/v3/droplets/nope/logs"),
        ("DELETE", f"/v3/droplets/{missing}"),
        ("GET", f"/v3/apps/{missing}/droplets"),
    ):
        resp = await api.request(method, path)
        assert resp.status == 404, (method, path)


async def test_staged_droplet_view(api: Recorder, etcd: RawEtcd) -> None:
    pid, app = await make_app(api)
    package = await ready_bits(api, app)
    guid = (await stage(api, package))["guid"]
    response = BuildpackStagingResponse(
        hash=Hash(value="abc"), buildpack="static", stack="busybox", process_types={"web": "httpd"}
    )
    await set_droplet(
        etcd, pid, app, guid, state="STAGED", staging_response=response, image="lb/x:1"
    )
    body = await api.call("GET", f"/v3/droplets/{guid}")
    assert body["state"] == "STAGED"
    assert body["image"] == "lb/x:1"
    assert body["staging_response"] == {
        "hash": {"type": "sha1", "value": "abc"},
        "buildpack": "static",
        "stack": "busybox",
        "process_types": {"web": "httpd"},
    }


# lists -------------------------------------------------------------------------------------------


async def test_lists_filter_and_page(api: Recorder, etcd: RawEtcd) -> None:
    pid, web = await make_app(api, name="web")
    _, worker = await make_app(api, name="worker")
    p1 = await ready_bits(api, web)
    p2 = (await create(api, web, "docker", image="busybox"))["guid"]
    p3 = await ready_bits(api, worker)
    d1 = (await stage(api, p1))["guid"]
    d2 = (await stage(api, p1))["guid"]
    d3 = (await stage(api, p2, {"lifecycle": DOCKER}))["guid"]
    d4 = (await stage(api, p3))["guid"]
    later = now() + timedelta(hours=1)  # timestamps are to the second: make the order certain
    await set_droplet(etcd, pid, web, d2, state="FAILED", error="no buildpack", updated=later)

    async def guids(query: str, path: str = "/v3/droplets") -> set[str]:
        body = await api.call("GET", f"{path}?{query}")
        return {r["guid"] for r in body["resources"]}

    assert await guids("") == {d1, d2, d3, d4}
    assert await guids(f"app_guids={web}") == {d1, d2, d3}
    assert await guids(f"package_guids={p1},{p3}") == {d1, d2, d4}
    assert await guids("states=FAILED") == {d2}
    assert await guids(f"states=PENDING&app_guids={web}&package_guids={p1}") == {d1}
    assert await guids("", f"/v3/packages/{p1}/droplets") == {d1, d2}
    assert await guids("states=PENDING", f"/v3/packages/{p1}/droplets") == {d1}
    assert await guids("", f"/v3/apps/{worker}/droplets") == {d4}
    assert await guids(f"package_guids={p2}", f"/v3/apps/{web}/droplets") == {d3}

    ordered = await api.call("GET", "/v3/droplets?per_page=2&order_by=-updated_at")
    assert ordered["resources"][0]["guid"] == d2, "the one just changed comes first"
    assert ordered["pagination"]["total_results"] == 4
    assert ordered["pagination"]["total_pages"] == 2
    second = await api.call("GET", "/v3/droplets?per_page=2&page=2&order_by=-updated_at")
    seen = [r["guid"] for r in ordered["resources"] + second["resources"]]
    assert sorted(seen) == sorted([d1, d2, d3, d4])

    resp = await api.request("GET", "/v3/droplets?states=DONE")
    assert resp.status == 400
    assert "query parameter states" in details(await resp.json())


# deletes -----------------------------------------------------------------------------------------


async def test_delete_removes_droplet_helper_and_log(api: Recorder, etcd: RawEtcd) -> None:
    pid, app = await make_app(api)
    package = await ready_bits(api, app)
    guid = (await stage(api, package))["guid"]
    api.blobs.append_log(guid, "-----> Detecting")
    resp = await api.request("DELETE", f"/v3/droplets/{guid}")
    assert resp.status == 204
    raw = await dump(etcd)
    assert keys.droplet(pid, app, guid) not in raw
    assert keys.droplet_owner(guid) not in raw
    assert not api.blobs.exists("droplets", guid)
    assert (await api.request("GET", f"/v3/droplets/{guid}")).status == 404
    # The package is untouched; deleting a package keeps its droplets.
    other = (await stage(api, package))["guid"]
    assert (await api.request("DELETE", f"/v3/packages/{package}")).status == 204
    kept = await api.call("GET", f"/v3/droplets/{other}")
    assert kept["links"]["package"]["href"] == f"/v3/packages/{package}"


async def test_deleting_the_app_removes_droplet_and_package_helpers(
    api: Recorder, etcd: RawEtcd
) -> None:
    pid, app = await make_app(api)
    package = await ready_bits(api, app)
    droplets = [(await stage(api, package))["guid"] for _ in range(2)]
    resp = await api.request("DELETE", f"/api/projects/{pid}/services/{app}")
    assert resp.status == 204
    raw = await dump(etcd)
    for guid in droplets:
        assert keys.droplet_owner(guid) not in raw
    assert keys.package_owner(package) not in raw
    assert keys.app_owner(app) not in raw
    assert not [k for k in raw if k.startswith(keys.HELPER_DROPLETS)]
    assert (await api.call("GET", "/v3/droplets"))["resources"] == []


# staging output ----------------------------------------------------------------------------------


async def test_logs_read(api: Recorder, etcd: RawEtcd) -> None:
    _, app = await make_app(api)
    package = await ready_bits(api, app)
    guid = (await stage(api, package))["guid"]
    resp = await api.request("GET", f"/v3/droplets/{guid}/logs")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    assert await resp.text() == "", "empty while PENDING"
    api.blobs.append_log(guid, "-----> Detecting buildpack")
    api.blobs.append_log(guid, "       static: pass\n")
    text = await (await api.request("GET", f"/v3/droplets/{guid}/logs")).text()
    assert text == "-----> Detecting buildpack\n       static: pass\n"
    resp = await api.request("GET", f"/v3/droplets/{guid}/logs?follow=maybe")
    assert resp.status == 400


async def test_logs_follow_until_staged(api: Recorder, etcd: RawEtcd) -> None:
    pid, app = await make_app(api)
    package = await ready_bits(api, app)
    guid = (await stage(api, package))["guid"]
    api.blobs.append_log(guid, "line 1")
    resp = await api.client.get(f"/v3/droplets/{guid}/logs?follow=true")
    assert resp.status == 200
    first = await asyncio.wait_for(resp.content.readline(), 5)
    assert first == b"line 1\n"
    await set_droplet(etcd, pid, app, guid, state="STAGING")
    api.blobs.append_log(guid, "line 2")
    assert await asyncio.wait_for(resp.content.readline(), 5) == b"line 2\n"
    # Output written just before the final state is still delivered, then the stream ends.
    api.blobs.append_log(guid, "line 3")
    await set_droplet(etcd, pid, app, guid, state="STAGED", image="lb/app:1")
    rest = await asyncio.wait_for(resp.content.read(), 5)
    assert rest == b"line 3\n"
    assert resp.content.at_eof()


async def test_logs_follow_ends_when_deleted_or_failed(api: Recorder, etcd: RawEtcd) -> None:
    pid, app = await make_app(api)
    package = await ready_bits(api, app)
    doomed = (await stage(api, package))["guid"]
    resp = await api.client.get(f"/v3/droplets/{doomed}/logs?follow=true")
    await asyncio.sleep(0.3)
    assert (await api.request("DELETE", f"/v3/droplets/{doomed}")).status == 204
    assert await asyncio.wait_for(resp.content.read(), 5) == b""

    failed = (await stage(api, package))["guid"]
    await set_droplet(etcd, pid, app, failed, state="FAILED", error="boom")
    api.blobs.append_log(failed, "-----> Staging failed: boom")
    resp = await api.client.get(f"/v3/droplets/{failed}/logs?follow=true")
    text = await asyncio.wait_for(resp.text(), 5)
    assert text == "-----> Staging failed: boom\n", "a final droplet's log is sent whole, then ends"


async def test_logs_follow_ends_on_shutdown(make_client: ClientFactory, tmp_path: Path) -> None:
    client = await make_client(data_dir=tmp_path)
    api = Recorder(client)
    _, app = await make_app(api)
    package = await ready_bits(api, app)
    guid = (await stage(api, package))["guid"]
    resp = await api.client.get(f"/v3/droplets/{guid}/logs?follow=true")
    assert resp.status == 200
    await asyncio.sleep(0.3)
    started = asyncio.get_running_loop().time()
    await client.server.app.shutdown()  # sets State.closing
    await asyncio.wait_for(resp.content.read(), 5)
    assert asyncio.get_running_loop().time() - started < 2
