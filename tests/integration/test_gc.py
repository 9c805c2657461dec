"""The gc controller removes what crashes and lost nodes leave, and nothing that is alive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from lastbackend import codec
from lastbackend.controllers.gc import GarbageCollector
from lastbackend.controllers.runner import ControllerRunner
from lastbackend.model.common import now
from lastbackend.model.platform import Container, Meta
from lastbackend.model.pods import Pod, PodSpec
from lastbackend.store import keys
from lastbackend.store.etcd import Etcd

pytestmark = pytest.mark.etcd

PID, SID, GONE = (
    "0b3a2f2e-8f5e-4a4b-9a55-5d0b7f7a1c11",
    "1c4b3e3f-9a6f-4b5c-8b66-6e1c8a8b2d22",
    "2d5c4f40-ab70-4c6d-9c77-7f2d9b9c3e33",
)


def container(cid: str, pod: str) -> bytes:
    t = now()
    return codec.dumps(Container(cid, "running", t, t, {}, pod=pod, node="n1"))


def pod(pod_id: str, service: str) -> bytes:
    return codec.dumps(Pod(pod_id, PID, service, "n1", "t1", PodSpec(image="busybox"), now()))


@pytest.fixture
async def gc(etcd: Etcd) -> AsyncIterator[ControllerRunner]:
    runner = ControllerRunner(GarbageCollector(), etcd, lease_ttl=2)
    yield runner
    await runner.stop(grace=1)


async def test_sweeps_orphans_and_keeps_the_living(etcd: Etcd, gc: ControllerRunner) -> None:
    t = now()
    await etcd.put(keys.service_part(PID, SID, "meta"), codec.dumps(Meta("web", t, t)))
    alive = {
        keys.pod_spec("n1", "live-pod"): pod("live-pod", SID),
        keys.pod("live-pod"): f"{PID}:{SID}".encode(),
        keys.container(PID, SID, "c-live"): container("c-live", "live-pod"),
        keys.container(PID, SID, "c-manual"): container("c-manual", ""),  # not ours to judge
    }
    garbage = {
        keys.container(PID, SID, "c-dead-node"): container("c-dead-node", "moved-pod"),
        keys.pod("lonely-helper"): f"{PID}:{SID}".encode(),
        keys.pod_spec("n1", "pod-of-gone"): pod("pod-of-gone", GONE),
    }
    for key, value in {**alive, **garbage}.items():
        await etcd.put(key, value)
    gc.start()

    async def swept() -> bool:
        found = {kv.key for kv in (await etcd.range(keys.ROOT)).kvs}
        return not (found & garbage.keys())

    for _ in range(200):
        if await swept():
            break
        await asyncio.sleep(0.05)
    found = {kv.key for kv in (await etcd.range(keys.ROOT)).kvs}
    assert not (found & garbage.keys()), found & garbage.keys()
    assert alive.keys() <= found
