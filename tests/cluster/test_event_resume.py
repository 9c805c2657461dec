"""``/api/events`` streams that lose nothing across a kill -9 of their API and of the etcd leader.

An SSE client reads one ``lastbackend api`` while projects are created through the other; its API
is killed with ``kill -9`` and it reconnects to the other with ``Last-Event-ID`` (as EventSource
and the dashboard do); later the etcd leader member is killed and restarted. What it saw is then
compared with etcd's own history (a watch from the start revision): every change, in revision
order, none twice, no gap (the watch properties of etcd's robustness tests: ordered, unique,
reliable, resumable).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import attrs
import pytest

from lastbackend.store import keys
from tests.cluster.apis import Ledger, problems, projects_in_etcd, start_apis, write_steadily
from tests.cluster.etcd_cluster import EtcdCluster
from tests.integration.test_daemon import Daemon
from tests.support import RawEtcd, eventually

pytestmark = [pytest.mark.etcd, pytest.mark.cluster]

SYSTEM = keys.ROOT + "system/"


@attrs.define
class Reader:
    """An SSE client that resumes with the last id it saw, on whichever API is given next."""

    seen: list[tuple[int, str, str]] = attrs.field(factory=list)  # (revision, key, kind)
    last_id: str = ""
    reconnects: int = 0

    async def read(self, http: aiohttp.ClientSession, url: str, until: asyncio.Event) -> None:
        """Read ``url``'s stream until it breaks or ``until`` is set and the stream is idle."""
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        async with http.get(f"{url}/api/events?heartbeat=1", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            event: dict[str, str] = {}
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):  # heartbeat
                    if until.is_set():
                        return
                    continue
                if line:
                    field, _, value = line.partition(": ")
                    event[field] = value
                    continue
                if "data" in event and event.get("event") in ("created", "updated", "deleted"):
                    data = json.loads(event["data"])
                    self.seen.append((data["revision"], data["key"], data["kind"]))
                assert event.get("event") != "relist", event
                self.last_id = event.get("id", self.last_id)
                event = {}


async def _history(etcd: RawEtcd, start: int, end: int) -> list[tuple[int, str, str]]:
    """Every change under /lastbackend/ but system/ from ``start`` to ``end``, from etcd."""
    found: list[tuple[int, str, str]] = []
    async with asyncio.timeout(30):
        async for batch in etcd.watch(keys.ROOT, start_revision=start):
            for ev in batch:
                kind = "deleted" if ev.kind == "delete" else "updated" if ev.prev else "created"
                if not ev.kv.key.startswith(SYSTEM):
                    found.append((ev.kv.mod_revision, ev.kv.key, kind))
            if batch[-1].kv.mod_revision >= end:
                return found
    return found


async def test_a_stream_resumed_on_the_other_api_after_kills_misses_and_repeats_nothing(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    async with RawEtcd(etcd_cluster.endpoints, tls=etcd_cluster.tls) as etcd:
        await etcd.delete_prefix(keys.ROOT)
        start = await etcd.status()
        read_api, write_api = await asyncio.to_thread(start_apis, etcd_cluster, tmp_path, 2)
        reader, ledger = Reader(last_id=str(start)), Ledger()
        stop_writing, stop_reading = asyncio.Event(), asyncio.Event()
        writer = asyncio.create_task(write_steadily([write_api.url], ledger, stop_writing))
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=10)) as http:
                first = asyncio.create_task(reader.read(http, read_api.url, stop_reading))
                await asyncio.sleep(3)
                await asyncio.to_thread(read_api.cleanup)  # kill -9
                with pytest.raises(aiohttp.ClientError):
                    await first
                reader.reconnects += 1
                second = asyncio.create_task(reader.read(http, write_api.url, stop_reading))
                await asyncio.sleep(2)
                leader = etcd_cluster.leader()
                etcd_cluster.kill(leader)
                await asyncio.sleep(3)
                await asyncio.to_thread(etcd_cluster.start, leader)
                await asyncio.sleep(2)
                stop_writing.set()
                await writer
                end = await etcd.status()

                async def caught_up() -> bool:
                    return bool(reader.seen) and reader.seen[-1][0] >= end

                await eventually(caught_up, within=30)
                stop_reading.set()
                await asyncio.wait_for(second, 10)
        finally:
            stop_writing.set()
            await asyncio.to_thread(_stop, [read_api, write_api])
        history = await _history(etcd, start + 1, end)
        by_index, metas = await projects_in_etcd(etcd)
    print(f"\n{ledger.summary()}; events seen {len(reader.seen)}, etcd's {len(history)}")
    assert len(history) >= 2 * len(ledger.acknowledged)  # two keys per project
    assert reader.seen == history
    assert list(problems(ledger, by_index, metas)) == []


def _stop(apis: list[Daemon]) -> None:
    for api in apis:
        api.cleanup()
