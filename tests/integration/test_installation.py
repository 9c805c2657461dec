"""The installation id: made once, whoever asks first, and the same for every process after."""

from __future__ import annotations

import asyncio

import pytest

from lastbackend.store import installation, keys
from lastbackend.store.etcd import Etcd
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd


async def test_processes_starting_together_agree_on_one_id(etcd: RawEtcd) -> None:
    async with Etcd(etcd.endpoints) as second:
        ids = await asyncio.gather(*(installation.ensure(client) for client in [etcd, second] * 10))
    stored = await etcd.get(keys.INSTALLATION)
    assert stored is not None
    assert set(ids) == {stored.value.decode()}
    assert len(ids[0]) == 32
    assert await installation.ensure(etcd) == ids[0], "and it never changes"


def test_unlabelled_objects_count_as_ours_and_another_id_never_does() -> None:
    assert installation.ours({}, "a")
    assert installation.ours({installation.LABEL: "a"}, "a")
    assert not installation.ours({installation.LABEL: "b"}, "a")
