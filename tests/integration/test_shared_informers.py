"""Controllers in one process share one list + watch per prefix (store.informer.Informers), on a
real etcd: etcd itself counts the watchers."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Sequence

import pytest

from lastbackend.controllers.runner import Controller, Manager, Watch
from lastbackend.store import keys
from lastbackend.store.embedded import EmbeddedEtcd
from lastbackend.store.informer import Informers, KeyMap
from tests.support import RawEtcd, eventually

pytestmark = pytest.mark.etcd

P = f"{keys.ROOT}shared-test/"


def _by_first_segment(raw: str) -> str | None:
    rest = raw.removeprefix(P)
    return rest.split("/", 1)[0] if "/" in rest else None


def _everything(_: str) -> str:
    return "all"


async def watchers(server: EmbeddedEtcd) -> int:
    """Watchers open on the server, by its own metrics."""

    def scrape() -> str:
        with urllib.request.urlopen(f"http://{server.endpoint}/metrics", timeout=5) as resp:
            return resp.read().decode()

    text = await asyncio.to_thread(scrape)
    found = re.search(r"^etcd_debugging_mvcc_watcher_total (\S+)$", text, re.M)
    assert found, "etcd exposes no watcher gauge"
    return int(float(found.group(1)))


async def test_two_key_maps_on_one_prefix_open_one_watch(
    private: tuple[EmbeddedEtcd, RawEtcd],
) -> None:
    server, etcd = private
    await etcd.put(P + "a/1", "a1")
    await etcd.put(P + "top", "ignored by the grouped view")
    before = await watchers(server)
    shared = Informers(etcd)
    grouped = shared.acquire(P, to_key=_by_first_segment)
    whole = shared.acquire(P, to_key=_everything)
    try:
        assert shared.acquire(P, to_key=_by_first_segment) is grouped  # same pair, same view
        await asyncio.wait_for(grouped.synced.wait(), 10)
        informer = shared.informer(P)
        assert informer is not None
        await eventually(lambda: _watchers_back(server, before + 1))

        # Each view keeps what its own map keeps, over the one cache.
        assert grouped.work_keys() == ["a"]
        assert set(grouped.cache) == {P + "a/1"}
        assert set(whole.cache) == {P + "a/1", P + "top"}

        # A view taken late, on a running informer, indexes the cache as it stands and then
        # hears what changes.
        heard: list[str] = []
        late = shared.acquire(P, to_key=lambda raw: raw.rsplit("/", 1)[-1])
        late.add_handler(lambda key, old, new: heard.append(key))
        assert set(late.work_keys()) == {"1", "top"}
        await etcd.put(P + "b/2", "b2")
        await eventually(lambda: _async(grouped.work_keys() == ["a", "b"] and heard))
        assert heard == [P + "b/2"]
        assert (informer.lists, informer.watches) == (1, 1)
        assert await watchers(server) == before + 1
        await shared.release(late)
    finally:
        await shared.release(grouped)
        await shared.release(grouped)
        assert shared.informer(P) is not None  # ``whole`` still holds it
        await shared.release(whole)
    assert shared.informer(P) is None  # the last release stopped it
    await eventually(lambda: _watchers_back(server, before))


class Recording(Controller):
    """A controller that records the work keys it reconciled."""

    def __init__(self, name: str, to_key: KeyMap, prefix: str = P) -> None:
        super().__init__()
        self.name = name
        self.prefix = prefix
        self._to_key = to_key
        self.reconciled: set[str] = set()

    def watches(self) -> Sequence[Watch]:
        return [Watch(self.prefix, to_key=self._to_key)]

    async def reconcile(self, key: str) -> float | None:
        self.reconciled.add(key)
        return None


async def _running(etcd: RawEtcd, server: EmbeddedEtcd, controllers: list[Recording]) -> int:
    """Run ``controllers`` under one Manager until each reconciled a key; the watchers open."""
    async with Manager(etcd, controllers, lease_ttl=5) as manager:
        await eventually(lambda: _async(manager.ready and all(c.reconciled for c in controllers)))
        await asyncio.sleep(0.5)
        return await watchers(server)


async def test_two_controllers_share_the_watch_of_their_prefix(
    private: tuple[EmbeddedEtcd, RawEtcd],
) -> None:
    server, etcd = private
    other = f"{keys.ROOT}shared-other/"
    await etcd.put(P + "a/1", "a1")
    await etcd.put(other + "c/3", "c3")

    grouped = Recording("grouped", _by_first_segment)
    sweeping = Recording("sweeping", _everything)
    async with Manager(etcd, [grouped, sweeping], lease_ttl=5) as manager:
        await eventually(
            lambda: _async(manager.ready and grouped.reconciled and sweeping.reconciled)
        )
        assert (grouped.reconciled, sweeping.reconciled) == ({"a"}, {"all"})
        await etcd.put(P + "b/2", "b2")
        await eventually(lambda: _async("b" in grouped.reconciled))
        informer = manager.informers.informer(P)
        assert informer is not None
        assert (informer.lists, informer.watches) == (1, 1)
        await asyncio.sleep(0.5)  # the elections' watches settle
        sharing = await watchers(server)

    # The same two elections, but the second controller watches another prefix: one watch more.
    apart = await _running(
        etcd,
        server,
        [Recording("grouped", _by_first_segment), Recording("sweeping", _everything, other)],
    )
    assert apart - sharing == 1


async def _async(value: object) -> object:
    return value


async def _watchers_back(server: EmbeddedEtcd, count: int) -> bool:
    return await watchers(server) == count
