"""Concurrent API calls against one etcd: the transactions of DESIGN.md section 5 under load.

Requests are spread over several API instances (each with its own name cache), as several
stateless API processes would be in a real installation, and fired at once with
``asyncio.gather``. After each race the tree is read back and checked with
:func:`tests.integration.test_store_machine.tree_problems`: name indexes and metas match one to
one and no key outlives its object.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from lastbackend.store import keys
from tests.conftest import ClientFactory, dump
from tests.integration.test_store_machine import tree_problems
from tests.support import RawEtcd

Client = TestClient[Any, Any]
API_PROCESSES = 5


@pytest.fixture
async def apis(make_client: ClientFactory) -> list[Client]:
    """Several API instances on the same etcd, like several API processes."""
    return [await make_client() for _ in range(API_PROCESSES)]


async def call(client: Client, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    """Status and decoded JSON body (``None`` for an empty one)."""
    resp: ClientResponse = await client.request(method, path, **kwargs)
    text = await resp.text()
    return resp.status, json.loads(text) if text else None


async def race(
    apis: list[Client], method: str, paths_and_bodies: list[tuple[str, Any]]
) -> list[tuple[int, Any]]:
    """Fire every request at once, round-robin over the API instances."""
    return list(
        await asyncio.gather(
            *(
                call(apis[i % len(apis)], method, path, json=body)
                for i, (path, body) in enumerate(paths_and_bodies)
            )
        )
    )


def assert_error(status: int, body: Any, expected: int) -> None:
    assert status == expected, body
    assert isinstance(body, dict), body
    assert set(body) == {"errors"}, body
    assert body["errors"], body
    for error in body["errors"]:
        assert set(error) == {"code", "title", "detail"}, error
        assert isinstance(error["code"], int)
        for text in (error["title"], error["detail"]):
            assert isinstance(text, str)
            assert text


async def assert_consistent(etcd: RawEtcd) -> dict[str, bytes]:
    tree = await dump(etcd)
    assert tree_problems(tree) == []
    return tree


async def create_project(api: Client, name: str) -> str:
    status, body = await call(api, "POST", "/api/projects", json={"name": name})
    assert status == 201, body
    return str(body["id"])


def statuses(results: list[tuple[int, Any]]) -> Counter[int]:
    return Counter(status for status, _ in results)


# creates ----------------------------------------------------------------------------------------


async def test_50_concurrent_project_creates_with_one_name(
    apis: list[Client], etcd: RawEtcd
) -> None:
    results = await race(apis, "POST", [("/api/projects", {"name": "demo"})] * 50)

    assert statuses(results) == {201: 1, 409: 49}
    for status, body in results:
        if status == 409:
            assert_error(status, body, 409)
            assert "demo" in body["errors"][0]["detail"]
    (winner,) = (body for status, body in results if status == 201)
    tree = await assert_consistent(etcd)
    assert tree == {
        keys.project_name("demo"): winner["id"].encode(),
        keys.project_meta(winner["id"]): tree[keys.project_meta(winner["id"])],
    }


async def test_50_concurrent_service_creates_with_one_name(
    apis: list[Client], etcd: RawEtcd
) -> None:
    pid = await create_project(apis[0], "demo")
    body = {"name": "web", "config": {"image": "nginx:1.27"}}
    results = await race(apis, "POST", [("/api/projects/demo/services", body)] * 50)

    assert statuses(results) == {201: 1, 409: 49}
    for status, err in results:
        if status == 409:
            assert_error(status, err, 409)
    (winner,) = (body for status, body in results if status == 201)
    sid = winner["id"]
    tree = await assert_consistent(etcd)
    assert set(tree) == {
        keys.project_name("demo"),
        keys.project_meta(pid),
        keys.service_name(pid, "web"),
        keys.app_owner(sid),
        *(keys.service_part(pid, sid, part) for part in ("meta", "config", "domains", "image")),
    }
    assert tree[keys.service_name(pid, "web")] == sid.encode()


# updates ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("writers", [20, 50])
async def test_concurrent_description_patches_all_succeed(
    apis: list[Client], etcd: RawEtcd, writers: int
) -> None:
    """The server's read-modify-write retry turns every lost race into a retry, not an error.

    None of these PATCHes is conditional (no If-Match) and none conflicts with another in
    meaning, so every one must be applied (DESIGN.md section 5: GuaranteedUpdate).
    """
    pid = await create_project(apis[0], "demo")
    descriptions = [f"description {i}" for i in range(writers)]
    results = await race(
        apis, "PATCH", [(f"/api/projects/{pid}", {"description": d}) for d in descriptions]
    )

    assert statuses(results) == {200: writers}, [b for s, b in results if s != 200][:1]
    assert [body["description"] for _, body in results] == descriptions
    meta = await etcd.get(keys.project_meta(pid))
    assert meta is not None
    assert json.loads(meta.value)["description"] in descriptions
    assert meta.version == 1 + writers  # every PATCH changed something, so every one was written
    _, final = await call(apis[0], "GET", "/api/projects/demo")
    assert final["description"] == json.loads(meta.value)["description"]
    await assert_consistent(etcd)


async def test_20_concurrent_renames_to_one_name_from_20_projects(
    apis: list[Client], etcd: RawEtcd
) -> None:
    pids = [await create_project(apis[0], f"p{i}") for i in range(20)]
    results = await race(apis, "PATCH", [(f"/api/projects/{pid}", {"name": "new"}) for pid in pids])

    assert statuses(results) == {200: 1, 409: 19}
    for status, body in results:
        if status == 409:
            assert_error(status, body, 409)
            assert "new" in body["errors"][0]["detail"]
    (winner,) = (pid for pid, (status, _) in zip(pids, results, strict=True) if status == 200)
    tree = await assert_consistent(etcd)
    names = {k for k in tree if keys.is_project_name_key(k)}
    assert len(names) == 20
    assert tree[keys.project_name("new")] == winner.encode()
    assert keys.project_name(f"p{pids.index(winner)}") not in tree


async def test_20_concurrent_renames_of_two_projects_to_one_name(
    apis: list[Client], etcd: RawEtcd
) -> None:
    """Ten renames of each of two projects: one project gets the name; its other nine renames
    find nothing left to change (200), the other project's ten are refused (409)."""
    first, second = await create_project(apis[0], "one"), await create_project(apis[0], "two")
    requests = [(f"/api/projects/{pid}", {"name": "new"}) for pid in (first, second) * 10]
    results = await race(apis, "PATCH", requests)

    by_project: dict[str, Counter[int]] = {first: Counter(), second: Counter()}
    for (path, _), (status, body) in zip(requests, results, strict=True):
        by_project[path.rsplit("/", 1)[1]][status] += 1
        if status != 200:
            assert_error(status, body, 409)
    winner, loser = (first, second) if by_project[first][200] else (second, first)
    assert by_project[winner] == {200: 10}
    assert by_project[loser] == {409: 10}
    tree = await assert_consistent(etcd)
    assert tree[keys.project_name("new")] == winner.encode()
    assert {k for k in tree if keys.is_project_name_key(k)} == {
        keys.project_name("new"),
        keys.project_name("two" if winner == first else "one"),
    }
    for pid in (first, second):
        _, shown = await call(apis[0], "GET", f"/api/projects/{pid}")
        assert tree[keys.project_name(shown["name"])] == pid.encode()


# deletes racing creates -------------------------------------------------------------------------


async def test_service_creates_racing_project_delete_leave_no_orphans(
    apis: list[Client], etcd: RawEtcd
) -> None:
    """A service created while its project is deleted either goes with the project or is
    refused; nothing of it may survive the project."""
    rng = random.Random(1)
    seen: Counter[int] = Counter()
    for round_ in range(30):
        pid = await create_project(apis[0], "demo")
        await create_project(apis[0], "other")  # a bystander that must not be touched

        async def create(i: int, path: str) -> tuple[int, Any]:
            await asyncio.sleep(rng.uniform(0, 0.004))
            return await call(apis[i % len(apis)], "POST", path, json={"name": f"s{i}"})

        async def delete() -> tuple[int, Any]:
            await asyncio.sleep(rng.uniform(0, 0.004))
            return await call(apis[-1], "DELETE", "/api/projects/demo")

        *creates, deleted = await asyncio.gather(
            *(create(i, f"/api/projects/{pid}/services") for i in range(4)), delete()
        )
        assert deleted[0] in (204, 404), deleted
        for status, body in creates:
            seen[status] += 1
            if status != 201:
                assert_error(status, body, 404)
        tree = await assert_consistent(etcd)
        project_gone = keys.project_meta(pid) not in tree
        demo_keys = {k for k in tree if pid in k or k == keys.project_name("demo")}
        if project_gone:
            assert demo_keys == set(), f"round {round_}: orphans {sorted(demo_keys)}"
        else:  # the delete lost: every service that was created is there, whole
            created = {body["id"] for status, body in creates if status == 201}
            assert created <= {k.split("/")[-2] for k in demo_keys if k.endswith("/meta")}
        assert len([k for k in tree if k not in demo_keys]) == 2, "the bystander was touched"
        await etcd.delete_prefix(keys.ROOT)
    assert seen[201] + seen[404] == 30 * 4
