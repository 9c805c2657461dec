"""A service's domains: one holder per host, claimed in the txn that writes them, shown as urls.

Real etcd, several API instances (as several API processes would be): a host is held by
``helper/domains/<host> -> <pid>:<sid>``, taken and let go with the ``domains`` part itself.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lastbackend.controllers.gc import GarbageCollector
from lastbackend.controllers.runner import ControllerRunner
from lastbackend.store import keys
from tests.conftest import ClientFactory
from tests.integration.test_projects import create_project, create_service, expect_error, snapshot
from tests.integration.test_races import call, race
from tests.support import RawEtcd, eventually

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]


async def held(etcd: RawEtcd) -> dict[str, str]:
    """host -> <pid>:<sid> of every claim in the tree."""
    found = (await etcd.range(keys.HELPER_DOMAINS)).kvs
    return {keys.leaf(kv.key): kv.value.decode() for kv in found}


async def test_a_host_another_service_holds_is_a_409_naming_it(api: Client, etcd: RawEtcd) -> None:
    pid = (await create_project(api, "demo"))["id"]
    web = await create_service(api, "demo", "web", domains={"shop.example.com": False})
    await create_service(api, "demo", "api")
    before = await snapshot(etcd)

    for method, path, body in (
        ("PUT", "/api/projects/demo/services/api/domains", {"shop.example.com": True}),
        ("PATCH", "/api/projects/demo/services/api", {"domains": {"Shop.Example.com": True}}),
        (
            "POST",
            "/api/projects/demo/services",
            {"name": "new", "domains": {"shop.example.com": True}},
        ),
    ):
        detail = await expect_error(await api.request(method, path, json=body), 409)
        assert "'shop.example.com' is held by service 'web' of project 'demo'" in detail
    assert await snapshot(etcd) == before  # held but not routed (false) still holds it
    assert await held(etcd) == {"shop.example.com": f"{pid}:{web['id']}"}


async def test_twenty_services_racing_for_one_host_exactly_one_wins(
    make_client: ClientFactory, etcd: RawEtcd
) -> None:
    apis = [await make_client() for _ in range(4)]
    await create_project(apis[0], "demo")
    sids = [(await create_service(apis[0], "demo", f"s{n}"))["id"] for n in range(20)]
    results = await race(
        apis,
        "PUT",
        [(f"/api/projects/demo/services/{sid}/domains", {"hot.example.com": True}) for sid in sids],
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [409] * 19, results
    [winner] = [sid for sid, (status, _) in zip(sids, results, strict=True) if status == 200]
    for status, body in results:
        if status == 409:
            assert "'hot.example.com' is held by service" in body["errors"][0]["detail"]
    owners = await held(etcd)
    assert list(owners) == ["hot.example.com"]
    assert owners["hot.example.com"].endswith(f":{winner}")
    for sid in sids:  # only the winner lists it
        _, domains = await call(apis[0], "GET", f"/api/projects/demo/services/{sid}/domains")
        assert domains == ({"hot.example.com": True} if sid == winner else {})


async def test_changing_and_deleting_domains_moves_and_releases_the_claims(
    api: Client, etcd: RawEtcd
) -> None:
    pid = (await create_project(api, "demo"))["id"]
    web = (await create_service(api, "demo", "web", domains={"a.example.com": True}))["id"]
    other = (await create_service(api, "demo", "other"))["id"]
    assert await held(etcd) == {"a.example.com": f"{pid}:{web}"}

    resp = await api.put(
        "/api/projects/demo/services/web/domains",
        json={"b.example.com": False, "Bücher.Example": True, "*.apps.example.com": True},
    )
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {
        "b.example.com": False,
        "xn--bcher-kva.example": True,
        "*.apps.example.com": True,
    }
    owner = f"{pid}:{web}"
    assert await held(etcd) == {
        "b.example.com": owner,
        "xn--bcher-kva.example": owner,
        "*.apps.example.com": owner,
    }
    # a.example.com was let go: another service can take it now
    resp = await api.put(
        f"/api/projects/demo/services/{other}/domains", json={"a.example.com": True}
    )
    assert resp.status == 200, await resp.text()

    assert (await api.delete("/api/projects/demo/services/web")).status == 204
    assert await held(etcd) == {"a.example.com": f"{pid}:{other}"}
    assert (await api.delete("/api/projects/demo")).status == 204
    assert await held(etcd) == {}


async def test_urls_show_every_host_that_reaches_the_service(api: Client) -> None:
    pid = (await create_project(api, "demo"))["id"]
    body = {
        "config": {"image": "busybox:1.36", "ports": {"8080/TCP": 0}},
        "domains": {"www.example.com": True, "old.example.com": False, "*.x.example.com": True},
    }
    web = await create_service(api, "demo", "web", **body)
    assert web["urls"] == [
        "http://web.demo.lb.localhost:8080/",
        "https://web.demo.lb.localhost:8443/",
        "http://www.example.com:8080/",
        "https://www.example.com:8443/",
    ]
    worker = await create_service(api, "demo", "worker", config={"image": "busybox:1.36"})
    assert worker["urls"] == []  # no port, nothing to route
    app = await (await api.get(f"/v3/apps/{web['id']}")).json()
    assert app["urls"] == web["urls"]
    apps = await (await api.get(f"/v3/apps?space_guids={pid}")).json()
    assert {a["name"]: a["urls"] for a in apps["resources"]} == {
        "web": web["urls"],
        "worker": [],
    }


async def test_gc_sweeps_a_claim_no_service_lists(api: Client, etcd: RawEtcd) -> None:
    pid = (await create_project(api, "demo"))["id"]
    web = (await create_service(api, "demo", "web", domains={"kept.example.com": True}))["id"]
    # what a project delete too large for one txn leaves behind
    await etcd.put(keys.domain("lost.example.com"), f"{pid}:00000000-0000-4000-8000-000000000000")
    runner = ControllerRunner(GarbageCollector(), etcd, lease_ttl=2)
    runner.start()
    try:
        await eventually(lambda: _only(etcd, {"kept.example.com": f"{pid}:{web}"}))
    finally:
        await runner.stop(grace=1)


async def _only(etcd: RawEtcd, expected: dict[str, str]) -> bool:
    return await held(etcd) == expected
