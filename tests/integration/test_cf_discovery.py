"""Cloud Foundry tools find the ``/v3`` family as they do on Cloud Foundry: the root documents,
``links`` with ``href`` everywhere, lists followed by ``pagination.next.href`` to the end, and the
shipped relationship shape ``{"data": {"guid"}}`` accepted beside seed 000's ``{"guid"}``."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from tests.conftest import ClientFactory

pytestmark = pytest.mark.etcd


async def follow(api: TestClient[Any, Any], href: str) -> Any:
    """GET an absolute href the way a CF client does: whatever host it names, this server."""
    url = URL(href)
    resp = await api.get(url.path_qs if url.is_absolute() else href)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_root_and_v3_documents_link_to_every_collection(
    make_client: ClientFactory,
) -> None:
    api = await make_client(admin_tokens=("discovery-admin-token-0123",))  # public all the same
    root = await follow(api, "/")
    links = root["links"]
    assert links["self"]["href"].startswith("http://")
    assert links["cloud_controller_v3"]["href"] == links["self"]["href"] + "/v3"
    assert links["uaa"] is None  # a component this platform lacks, as a CF root shows it
    v3 = await follow(api, links["cloud_controller_v3"]["href"])
    assert set(v3["links"]) == {"self", "apps", "packages", "droplets"}
    resp = await api.get(URL(v3["links"]["apps"]["href"]).path)
    assert resp.status == 401  # the documents are public, the data is not


async def test_the_shipped_relationship_shape_and_pagination_next_to_the_end(
    api: TestClient[Any, Any],
) -> None:
    project = await (await api.post("/api/projects", json={"name": "cf"})).json()
    for name in ("a", "b", "c"):
        resp = await api.post(
            "/v3/apps",
            json={"name": name, "relationships": {"space": {"data": {"guid": project["id"]}}}},
        )
        assert resp.status == 201, await resp.text()
    app = (await (await api.get("/v3/apps?names=a")).json())["resources"][0]
    assert all("href" in link for link in app["links"].values())
    resp = await api.post(
        "/v3/packages",
        json={"type": "bits", "relationships": {"app": {"data": {"guid": app["guid"]}}}},
    )
    assert resp.status == 201, await resp.text()
    package = await resp.json()
    assert package["links"]["upload"]["method"] == "POST"

    names: list[str] = []
    page: Any = await follow(api, "/v3/apps?per_page=2&order_by=name")
    while True:
        names += [a["name"] for a in page["resources"]]
        if page["pagination"]["next"] is None:
            break
        page = await follow(api, page["pagination"]["next"]["href"])
    assert names == ["a", "b", "c"]

    resp = await api.post(
        "/v3/apps", json={"name": "d", "relationships": {"space": {"data": {"guid": "nope"}}}}
    )
    assert resp.status == 422
    assert "relationships.space.guid" in (await resp.text())
