"""Rollouts gated on readiness, their status, revisions and rollback: real etcd, the fake engine.

The services controller and a node agent run as in production; the fake engine's programs make
the new containers of a bad deploy crash, so the old ones must keep serving.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from lastbackend.controllers.services import ServicesController
from tests.fakeruntime import FakeProcess
from tests.integration.test_services_controller import Cluster, cluster, make_service
from tests.support import eventually

pytestmark = pytest.mark.etcd
__all__ = ["cluster"]  # the fixture, shared with test_services_controller

SERVICE = "/api/projects/demo/services/web"


async def service(api: Any) -> dict[str, Any]:
    return dict(await (await api.get(SERVICE)).json())


async def rollout(api: Any) -> dict[str, Any] | None:
    found = (await service(api))["status"]["rollout"]
    return dict(found) if found else None


async def reaches(api: Any, wanted: str, revision: int) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        found = await rollout(api)
        ok = found and found["state"] == wanted and found["revision"] == revision
        return found if ok else None

    result: dict[str, Any] = await eventually(probe, 30)
    return result


def crash_on_version_2(process: FakeProcess) -> int | None:
    return 1 if process.env.get("VERSION") == "2" else None


async def test_a_bad_deploy_fails_the_old_pods_keep_serving_and_rollback_restores_it(
    cluster: Cluster, api: Any
) -> None:
    _, runtime = cluster.node("n1")
    runtime.on_start(crash_on_version_2)
    cluster.start(ServicesController())
    config = {"replicas": 2, "env": {"VERSION": "1"}, "min_ready": 1, "progress_deadline": 5}
    await make_service(api, **config)
    done = await reaches(api, "complete", 1)
    assert (done["ready"], done["desired"]) == (2, 2)
    old = {s.id for s in await cluster.running()}
    assert len(old) == 2

    resp = await api.patch(SERVICE, json={"config": {"env": {"VERSION": "2"}}})
    assert resp.status == 200, await resp.text()
    failed = await reaches(api, "failed", 2)
    # how long they ran (on the fake clock) and how often they were restarted
    assert re.fullmatch(
        r"new containers exit with code 1 after \d+ s \(\d+ restarts\)", failed["reason"]
    )
    assert failed["ready"] == 0
    running = {s.id for s in await cluster.running()}
    assert old <= running, "the old containers served throughout"
    assert len(await cluster.pods()) == 3, "no more new pods once failed: replicas + 1"

    revisions = await (await api.get(f"{SERVICE}/revisions")).json()
    assert [r["revision"] for r in revisions["resources"]] == [2, 1]
    assert revisions["resources"][1]["spec"]["env"] == {"VERSION": "1"}

    resp = await api.post(f"{SERVICE}/rollback")  # to the one before: 1
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["config"]["env"] == {"VERSION": "1"}
    back = await reaches(api, "complete", 3)  # a rollback is a new revision of the old template
    assert back["ready"] == 2
    assert {s.id for s in await cluster.running()} == old, "the old containers were kept"
    assert len(await cluster.pods()) == 2

    resp = await api.post(f"{SERVICE}/rollback", json={"revision": 9})
    assert resp.status == 422
    assert "no revision 9 (kept: 1, 2, 3)" in await resp.text()


async def test_a_good_deploy_counts_new_pods_only_after_min_ready(
    cluster: Cluster, api: Any
) -> None:
    cluster.node("n1")
    cluster.start(ServicesController())
    await make_service(api, replicas=1, env={"VERSION": "1"}, min_ready=2)
    await reaches(api, "complete", 1)
    old = {s.id for s in await cluster.running()}
    await api.patch(SERVICE, json={"config": {"env": {"VERSION": "2"}}})
    progressing = await reaches(api, "progressing", 2)
    assert progressing["ready"] == 0

    async def both_running() -> bool:
        return len(await cluster.running()) == 2

    await eventually(both_running, 10)  # the new one runs beside the old for min_ready seconds
    assert old <= {s.id for s in await cluster.running()}
    done = await reaches(api, "complete", 2)
    assert done["ready"] == 1

    async def old_gone() -> bool:  # drained from the routers, then stopped
        return not old & {s.id for s in await cluster.running()}

    await eventually(old_gone, 10)
