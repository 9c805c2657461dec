"""Push webhooks: replays queue nothing, and refusals say nothing (issue 13, section 4).

A signed delivery stays valid for its body forever, so anyone who saw one (a proxy log, the
git host's redelivery button) could send it again and queue the same builds again. And a 401 that
said "github is not connected" or "no webhook secret configured" told a caller which vendors
this install has.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from lastbackend.api.hooks import REFUSED, sign
from lastbackend.store import deliveries, keys
from tests.conftest import ClientFactory, dump
from tests.integration.test_hooks import (
    SECRET,
    World,
    builds_in,
    github_site,
    make_world,
    post_hook,
)
from tests.support import RawEtcd
from tests.unit.test_hook_payloads import SHA, bitbucket_change, bitbucket_push, gitlab_push

pytestmark = pytest.mark.etcd


@pytest.fixture
async def world(make_client: ClientFactory, tmp_path: Path) -> World:
    return await make_world(await make_client(data_dir=tmp_path))


def signed(vendor: str, payload: Any, delivery: str | None) -> dict[str, str]:
    """The headers each host sends with a push, naming the delivery as it names it."""
    raw = json.dumps(payload).encode()
    if vendor == "github":
        headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(SECRET, raw)}
        name = "X-GitHub-Delivery"
    elif vendor == "gitlab":
        headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET}
        name = "X-Gitlab-Event-UUID"
    else:
        headers = {"X-Event-Key": "repo:push", "X-Hub-Signature": sign(SECRET, raw)}
        name = "X-Request-UUID"
    return headers if delivery is None else {**headers, name: delivery}


PUSHES = {
    "github": github_site(),
    "gitlab": gitlab_push(),
    "bitbucket": bitbucket_push(bitbucket_change("master", SHA)),
}


# replays ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", ["github", "gitlab", "bitbucket"])
async def test_a_replayed_delivery_queues_nothing_and_answers_the_first_builds(
    world: World, etcd: RawEtcd, vendor: str
) -> None:
    payload, delivery = PUSHES[vendor], str(uuid.uuid4())
    status, first = await post_hook(world.api, vendor, payload, signed(vendor, payload, delivery))
    assert status == 202, first
    assert first["builds"]
    made = await builds_in(etcd)
    revision = await etcd.status()
    for _ in range(3):
        status, again = await post_hook(
            world.api, vendor, payload, signed(vendor, payload, delivery)
        )
        assert status == 202, again
        assert again == {"builds": first["builds"], "replayed": True}
    assert await builds_in(etcd) == made
    assert await etcd.status() == revision, "a replay writes nothing"

    # Another delivery of the same push is a new one: the host sent it twice on purpose.
    status, other = await post_hook(
        world.api, vendor, payload, signed(vendor, payload, str(uuid.uuid4()))
    )
    assert status == 202
    assert {b["number"] for b in other["builds"]} == {2}


async def test_copies_arriving_at_once_queue_one_set_of_builds(world: World, etcd: RawEtcd) -> None:
    payload, delivery = PUSHES["github"], str(uuid.uuid4())
    answers = await asyncio.gather(
        *(
            post_hook(world.api, "github", payload, signed("github", payload, delivery))
            for _ in range(6)
        )
    )
    statuses = sorted(status for status, _ in answers)
    assert set(statuses) <= {202, 409}, answers
    firsts = [body for status, body in answers if status == 202 and "replayed" not in body]
    assert len(firsts) == 1, answers
    assert len(await builds_in(etcd)) == len(firsts[0]["builds"]) == 3
    for status, body in answers:
        if status == 409:
            assert delivery in body["errors"][0]["detail"]
        elif "replayed" in body:
            assert body["builds"] == firsts[0]["builds"]


async def test_a_delivery_is_remembered_on_a_lease_of_a_week(world: World, etcd: RawEtcd) -> None:
    payload, delivery = PUSHES["gitlab"], str(uuid.uuid4())
    status, body = await post_hook(
        world.api, "gitlab", payload, signed("gitlab", payload, delivery)
    )
    assert status == 202
    key = keys.hook_delivery("gitlab", delivery)
    assert key == f"/lastbackend/hooks/deliveries/gitlab/{delivery}"
    stored = (await dump(etcd))[key]
    assert json.loads(stored)["builds"] == body["builds"]
    raw = await etcd._kv.get(key, timeout=5)  # the lease id is not part of the seam's KV
    ttl = await etcd.time_to_live(raw.kvs[0].lease)
    assert deliveries.TTL - 60 < ttl <= deliveries.TTL == 7 * 24 * 3600


async def test_a_push_without_a_delivery_name_is_taken_every_time(
    world: World, etcd: RawEtcd
) -> None:
    """Older GitLab sends no X-Gitlab-Event-UUID: nothing to know a replay by."""
    payload = PUSHES["gitlab"]
    for number in (1, 2):
        status, body = await post_hook(
            world.api, "gitlab", payload, signed("gitlab", payload, None)
        )
        assert status == 202
        assert [b["number"] for b in body["builds"]] == [number]
    assert not [k for k in await dump(etcd) if k.startswith(keys.HOOK_DELIVERIES)]


@pytest.mark.parametrize("delivery", ["../../projects/x", "a/b", "x" * 129, " ", "-x", "a b"])
async def test_a_delivery_name_that_cannot_be_a_key_is_a_400(
    world: World, etcd: RawEtcd, delivery: str
) -> None:
    payload = PUSHES["github"]
    before = await dump(etcd)
    status, body = await post_hook(
        world.api, "github", payload, signed("github", payload, delivery)
    )
    if not delivery.strip():  # a blank header is no delivery name at all
        assert status == 202
        return
    assert status == 400, body
    assert "X-GitHub-Delivery" in body["errors"][0]["detail"]
    assert await dump(etcd) == before


async def test_a_form_encoded_github_hook_is_a_415_saying_what_to_set(
    world: World, etcd: RawEtcd
) -> None:
    """GitHub's default content type: the body is payload=<url-encoded JSON>."""
    raw = b"payload=" + json.dumps(PUSHES["github"]).encode()
    headers = {
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": sign(SECRET, raw),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    revision = await etcd.status()
    resp = await world.api.post("/api/hooks/github", data=raw, headers=headers)
    assert resp.status == 415
    assert "application/json" in (await resp.json())["errors"][0]["detail"]
    assert await etcd.status() == revision


# one refusal ------------------------------------------------------------------------------------


async def test_every_refused_hook_gets_the_same_401(world: World, etcd: RawEtcd) -> None:
    """Unknown name, not connected, no secret, no signature, a wrong one: one answer."""
    await world.call("PUT", "/api/vendors/gitlab", {"token": "t", "webhook_secret": ""})
    await world.call("DELETE", "/api/vendors/bitbucket", None)
    payload = PUSHES["github"]
    raw = json.dumps(payload).encode()
    attempts = [
        ("slack", {}),  # no such hook vendor
        ("bitbucket", signed("bitbucket", payload, None)),  # not connected
        ("gitlab", signed("gitlab", PUSHES["gitlab"], None)),  # connected, no secret
        ("github", {"X-GitHub-Event": "push"}),  # no signature
        ("github", {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign("guess", raw)}),
        ("github", {"X-GitHub-Event": "push", "X-Hub-Signature": sign(SECRET, raw)}),
    ]
    revision = await etcd.status()
    answers = set()
    for vendor, headers in attempts:
        resp = await world.api.post(
            f"/api/hooks/{vendor}",
            data=raw,
            headers={"Content-Type": "application/json", **headers},
        )
        assert resp.status == 401, (vendor, await resp.text())
        answers.add((resp.status, await resp.read()))
    assert len(answers) == 1, answers
    [(_, body)] = answers
    assert json.loads(body)["errors"][0]["detail"] == REFUSED
    assert await etcd.status() == revision
