"""``lastbackend api`` processes on the test cluster, and a writer that keeps a ledger."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import attrs

from lastbackend.store import keys
from tests.cluster.etcd_cluster import EtcdCluster
from tests.integration.test_daemon import Daemon
from tests.support import RawEtcd, free_ports


def start_apis(cluster: EtcdCluster, tmp: Path, count: int) -> list[Daemon]:
    """``count`` API processes on every member of ``cluster``, ready."""
    apis = []
    for i, port in enumerate(free_ports(count)):
        data = tmp / f"api-{i}"
        args = ["api", *cluster.flags(), "--listen", f"127.0.0.1:{port}", "--data-dir", str(data)]
        apis.append(Daemon(tmp, args, port))
    for api in apis:
        api.wait_ready()
    return apis


@attrs.define
class Ledger:
    """What the writer was told, request by request."""

    acknowledged: list[str] = attrs.field(factory=list)
    failed: dict[str, str] = attrs.field(factory=dict)  # name -> status or error
    latencies: list[float] = attrs.field(factory=list)

    @property
    def sent(self) -> int:
        return len(self.acknowledged) + len(self.failed)

    @property
    def answered(self) -> float:
        return len(self.acknowledged) / self.sent if self.sent else 0.0

    def summary(self) -> str:
        slow = sorted(self.latencies)
        p99 = slow[int(len(slow) * 0.99)] if slow else 0.0
        return (
            f"sent {self.sent}, acknowledged {len(self.acknowledged)}, failed {len(self.failed)}"
            f" ({self.answered:.4%} answered), p99 {p99:.2f}s, slowest {max(slow or [0]):.2f}s"
        )


async def write_steadily(
    urls: Sequence[str], ledger: Ledger, stop: asyncio.Event, *, rate: float = 20.0
) -> None:
    """POST /api/projects at ``rate`` per second, alternating between ``urls``, each request
    in its own task (a slow answer does not slow the stream), until ``stop``."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def create(url: str, name: str) -> None:
            started = time.monotonic()
            try:
                async with http.post(f"{url}/api/projects", json={"name": name}) as resp:
                    await resp.read()
                    if resp.status == 201:
                        ledger.acknowledged.append(name)
                    else:
                        ledger.failed[name] = str(resp.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                ledger.failed[name] = repr(exc)
            ledger.latencies.append(time.monotonic() - started)

        tasks: list[asyncio.Task[None]] = []
        i = 0
        next_at = time.monotonic()
        while not stop.is_set():
            tasks.append(asyncio.create_task(create(urls[i % len(urls)], f"p-{i:05d}")))
            i += 1
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*tasks)


async def project_tree(etcd: RawEtcd) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """The projects as etcd holds them now: (name -> pid from the name index, pid -> meta)."""
    _, index = await etcd.pairs(keys.HELPER_PROJECTS)
    named = {k.decode().removeprefix(keys.HELPER_PROJECTS): v.decode() for k, v in index}
    metas: dict[str, dict[str, Any]] = {}
    for kv in (await etcd.range(keys.PROJECTS)).kvs:
        pid, _, leaf = kv.key.removeprefix(keys.PROJECTS).partition("/")
        if leaf == "meta":
            metas[pid] = json.loads(kv.value)
    return {name: pid for name, pid in named.items() if "/" not in name}, metas  # not services


def half_there(index: dict[str, str], metas: dict[str, dict[str, Any]]) -> Iterator[str]:
    """Every project the tree holds half: a meta without its name index, or an index entry
    without its project (one txn writes and deletes both, so no write may leave either)."""
    for pid, meta in metas.items():
        if index.get(meta["name"]) != pid:
            yield f"project {pid} {meta['name']} without its name index"
    for name, pid in index.items():
        if pid not in metas:
            yield f"name {name} -> {pid}, no such project"


def problems(
    ledger: Ledger, index: dict[str, str], metas: dict[str, dict[str, Any]]
) -> Iterator[str]:
    """Every way the tree disagrees with the ledger: an acknowledged project missing or there
    twice, or anything half there."""
    yield from half_there(index, metas)
    by_name: dict[str, list[str]] = {}
    for pid, meta in metas.items():
        by_name.setdefault(meta["name"], []).append(pid)
    for name in ledger.acknowledged:
        if by_name.get(name) != [index.get(name)]:
            yield f"{name}: acknowledged, projects {by_name.get(name)}, index {index.get(name)}"
