"""``/api/images`` against a real etcd: the document's keys, names, builds, bad input.

An image's name is the docker repository it is pushed to, so it holds ``/``: the name index key
encodes it, and the API takes it percent-encoded in one path segment.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from lastbackend.store.builds import Builds, Target
from tests.conftest import dump
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]
BASE = "/api/images"
NAME = "registry.local:5000/acme/web"
SOURCE = {"hub": "github.com", "owner": "lastbackend", "repo": "proxy", "branch": "master"}
IMAGE = {"name": NAME, "description": "the web image", "source": SOURCE}
INDEX = "/lastbackend/helper/images/"


async def create(api: Client, **fields: Any) -> dict[str, Any]:
    resp = await api.post(BASE, json={**IMAGE, **fields})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def expect_error(resp: ClientResponse, status: int) -> str:
    assert resp.status == status, await resp.text()
    errors = (await resp.json())["errors"]
    for error in errors:
        assert set(error) == {"code", "title", "detail"}
        assert error["title"].startswith("CF-")
    return "; ".join(e["detail"] for e in errors)


def by_name(name: str) -> str:
    return f"{BASE}/{quote(name, safe='')}"


async def test_create_writes_the_documented_keys(api: Client, etcd: RawEtcd) -> None:
    resp = await api.post(BASE, json=IMAGE)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    iid = body["id"]
    assert resp.headers["Location"] == f"{BASE}/{iid}"
    assert resp.headers["ETag"]
    assert list(body)[:5] == ["id", "name", "description", "created", "updated"]
    assert (body["name"], body["source"], body["builds"]) == (NAME, SOURCE, [])
    tree = await dump(etcd)
    assert set(tree) == {
        f"/lastbackend/images/{iid}/meta",
        f"/lastbackend/images/{iid}/source",
        f"{INDEX}registry.local:5000%2Facme%2Fweb",
    }
    meta = json.loads(tree[f"/lastbackend/images/{iid}/meta"])
    assert list(meta) == ["name", "description", "created", "updated"]
    assert meta["name"] == NAME
    assert json.loads(tree[f"/lastbackend/images/{iid}/source"]) == SOURCE
    assert tree[f"{INDEX}registry.local:5000%2Facme%2Fweb"].decode() == iid


async def test_get_by_id_or_encoded_name_and_list_in_name_order(api: Client) -> None:
    web = await create(api)
    other = await create(api, name="acme/api", source={**SOURCE, "repo": "api"})
    plain = await create(api, name="nginx")
    for path in (f"{BASE}/{web['id']}", by_name(NAME)):
        resp = await api.get(path)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["id"] == web["id"]
    assert (await (await api.get(f"{BASE}/nginx")).json())["id"] == plain["id"]
    body = await (await api.get(BASE)).json()
    assert [r["name"] for r in body["resources"]] == ["acme/api", "nginx", NAME]
    assert body["pagination"]["total_results"] == 3
    assert "builds" not in body["resources"][0]
    assert body["resources"][0]["id"] == other["id"]
    body = await (await api.get(BASE, params={"order_by": "-name", "per_page": "1"})).json()
    assert [r["name"] for r in body["resources"]] == [NAME]
    await expect_error(await api.get(by_name("acme/missing")), 404)


async def test_names_are_unique(api: Client, etcd: RawEtcd) -> None:
    await create(api)
    before, revision = await dump(etcd), await etcd.status()
    resp = await api.post(BASE, json={**IMAGE, "source": {**SOURCE, "repo": "other"}})
    assert "already taken" in await expect_error(resp, 409)
    assert (await dump(etcd), await etcd.status()) == (before, revision)


async def test_patch_merges_the_source_and_a_new_name_moves_the_index(
    api: Client, etcd: RawEtcd
) -> None:
    image = await create(api)
    resp = await api.patch(
        f"{BASE}/{image['id']}",
        json={"name": "registry.local:5000/acme/site", "source": {"branch": "dev"}},
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["name"] == "registry.local:5000/acme/site"
    assert body["description"] == "the web image"
    assert body["source"] == {**SOURCE, "branch": "dev"}
    assert body["created"] == image["created"]
    index = {k for k in await dump(etcd) if k.startswith(INDEX)}
    assert index == {f"{INDEX}registry.local:5000%2Facme%2Fsite"}
    await expect_error(await api.get(by_name(NAME)), 404)
    assert (await api.get(by_name("registry.local:5000/acme/site"))).status == 200


async def test_put_replaces_and_an_unchanged_put_writes_nothing(api: Client, etcd: RawEtcd) -> None:
    image = await create(api)
    replaced = {"name": "acme/web", "source": {**SOURCE, "owner": "acme"}}
    resp = await api.put(f"{BASE}/{image['id']}", json=replaced)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["name"], body["description"], body["source"]["owner"]) == ("acme/web", "", "acme")
    revision = await etcd.status()
    resp = await api.put(f"{BASE}/{image['id']}", json=replaced)
    assert resp.status == 200
    assert await etcd.status() == revision


async def test_builds_show_on_the_image_and_go_with_it(api: Client, etcd: RawEtcd) -> None:
    image = await create(api)
    keep = await create(api, name="acme/keep")
    builds = Builds(etcd)
    target = Target("image", image["id"])
    for n in range(1, 12):
        assert await builds.create(target, commit=f"c{n}", committer="ada") == n
    await builds.create(Target("image", keep["id"]))
    body = await (await api.get(f"{BASE}/{image['id']}")).json()
    assert [b["number"] for b in body["builds"]] == list(range(1, 12))
    first = body["builds"][0]
    assert (first["status"], first["commit"], first["committer"]) == ("queued", "c1", "ada")
    assert "commitMessage" in first

    resp = await api.delete(f"{BASE}/{image['id']}")
    assert resp.status == 204
    tree = await dump(etcd)
    assert not [k for k in tree if image["id"] in k or k.endswith("%2Facme%2Fweb")]
    assert f"/lastbackend/images/{keep['id']}/builds/1" in tree
    await expect_error(await api.get(f"{BASE}/{image['id']}"), 404)
    await expect_error(await api.delete(f"{BASE}/{image['id']}"), 404)


async def test_if_match(api: Client) -> None:
    image = await create(api)
    stale = {"If-Match": '"1"'}
    path = f"{BASE}/{image['id']}"
    await expect_error(await api.patch(path, json={"description": "x"}, headers=stale), 412)
    await expect_error(await api.delete(path, headers=stale), 412)
    etag = (await api.get(path)).headers["ETag"]
    assert (await api.delete(path, headers={"If-Match": etag})).status == 204


@pytest.mark.parametrize(
    ("method", "fields", "says"),
    [
        ("POST", {"name": "acme/web:1.0"}, "name: 'acme/web:1.0' has a tag or digest"),
        ("POST", {"name": "registry.local:5000"}, "name: 'registry.local:5000' has a tag"),
        ("POST", {"name": "acme/web@sha256:" + "a" * 64}, "has a tag or digest"),
        ("POST", {"name": "Acme/Web"}, "name: 'Acme/Web' is not a docker repository"),
        ("POST", {"name": "acme//web"}, "name: 'acme//web' is not a docker repository"),
        ("POST", {"name": ""}, "name: must not be empty"),
        ("POST", {"name": "a/" * 130 + "b"}, "name: must be at most 255 characters"),
        ("POST", {"name": "3f2c8a54-1b7e-4d2a-9c6f-0e5b7a1d2c3e"}, "name: '3f2c8a54"),
        ("POST", {"name": 5}, "name: must be a string"),
        ("POST", {"source": None}, "source: "),
        ("POST", {"source": {**SOURCE, "hub": "Git Hub"}}, "source.hub: 'Git Hub'"),
        ("POST", {"source": {**SOURCE, "branch": "a..b"}}, "source.branch: 'a..b'"),
        ("POST", {"source": {"hub": "github.com"}}, "source.owner: is required"),
        ("POST", {"created": "2017-03-01T14:13:08Z"}, "created: unknown field"),
        ("POST", {"description": "x" * 1025}, "description: must be at most 1024"),
        ("PATCH", {"name": "acme/web:2"}, "name: 'acme/web:2' has a tag or digest"),
        ("PATCH", {"source": {"repo": "../x"}}, "source.repo: '../x'"),
        ("PATCH", {"builds": []}, "builds: unknown field"),
        ("PUT", {"name": "nginx"}, "source: is required"),
    ],
)
async def test_bad_input_names_the_field_and_writes_nothing(
    api: Client, etcd: RawEtcd, method: str, fields: dict[str, Any], says: str
) -> None:
    image = await create(api, name="acme/existing")
    before, revision = await dump(etcd), await etcd.status()
    if method == "POST":
        resp = await api.post(BASE, json={**IMAGE, **fields})
    elif method == "PUT":
        resp = await api.put(f"{BASE}/{image['id']}", json=fields)
    else:
        resp = await api.patch(f"{BASE}/{image['id']}", json=fields)
    assert says in await expect_error(resp, 422)
    assert await dump(etcd) == before
    assert await etcd.status() == revision
