"""The whole cluster under a steady mixed load, through every fault of tests/cluster: a table.

Setup (what ``tests/cluster/test_process_faults.py`` runs, see :mod:`tests.cluster.harness`): a
3-member etcd cluster with TLS (:class:`tests.cluster.etcd_cluster.EtcdCluster`), this
machine's Docker engine and a second ``dockerd`` of its own (bridge ``lbbench0``), two each of
``lastbackend api``, ``controller``, ``router`` (each with its Caddy) and ``node`` (one per
engine), and the app ``web`` of ``shop`` (2 busybox httpd replicas) answering through both
routers. ``node.eviction_timeout`` is 3 s.

The load, for the whole run: 2 SSE clients of ``/api/events?prefix=projects/`` (one on each API
process, reconnecting to the other with ``Last-Event-ID`` when a stream ends); and for each
fault, from 3 s before it until 2 s after the cluster converged: a writer (project creates,
updates, deletes through both API processes with failover, kept in a ledger), a reader
(``GET /api/projects`` through both) and ~50 requests a second through the routers (a client
with both routers' addresses, retrying once on the other, as with two A records). Per fault:
router requests sent and failed, reads sent and failed, writes acknowledged, writes lost
(acknowledged but not in the tree as acknowledged, or anything half written: aim 0), and the
seconds from the fault until the containers converged (exactly 2, no pod twice, each answering
through every router). Then the SSE clients' totals: events, acknowledged creates either
never saw (waited for up to 15 s after the last write), repeated, out of order (aim 0).

Run from the repository root, as root (the second engine), when nobody else benchmarks::

    .venv/bin/python tests/bench/bench_cluster.py            # ~5 minutes, every fault
    .venv/bin/python tests/bench/bench_cluster.py --quick    # ~1.5 minutes: no eviction,
                                                              # staging or build fault
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.baseimage import BASE_IMAGE, ensure_base_image
from tests.bench.bench_containers import say
from tests.cluster import faults
from tests.cluster.etcd_cluster import EtcdCluster
from tests.cluster.harness import Cluster, Engine, Reader, RouterLoad, Stream, Writer
from tests.e2e.conftest import DEFAULT_URL, api_client, extra_engine
from tests.e2e.harness import Harness, eventually
from tests.e2e.test_builds import TOKEN, USER
from tests.gitserver import GitServer
from tests.support import RawEtcd


@dataclass
class Row:
    fault: str
    sent: int
    failed: int
    reads: int
    reads_failed: int
    acknowledged: int
    unacknowledged: int
    lost: int
    converged: float


def table(rows: list[Row]) -> str:
    lines = [
        "| fault | router requests | failed | answered | API reads | failed | writes acked "
        "| not acked | lost | converged s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        answered = 100 * (r.sent - r.failed) / r.sent if r.sent else 100.0
        lines.append(
            f"| {r.fault} | {r.sent} | {r.failed} | {answered:.2f}% | {r.reads} | "
            f"{r.reads_failed} | {r.acknowledged} | {r.unacknowledged} | {r.lost} | "
            f"{r.converged:.1f} |"
        )
    return "\n".join(lines)


async def run(c: Cluster, etcd_cluster: EtcdCluster, quick: bool) -> str:
    plan: list[tuple[str, Callable[[RawEtcd], Awaitable[faults.Healed]]]] = [
        ("kill -9 api", lambda etcd: faults.kill_api(c)),
        (
            "kill -9 services leader mid-rollout",
            lambda etcd: faults.kill_services_leader_mid_rollout(c, f"bench-{time.time()}"),
        ),
        ("SIGSTOP node 10 s", lambda etcd: faults.freeze_node(c, 10)),
        ("kill -9 caddy", lambda etcd: faults.kill_caddy(c, 0)),
        ("kill -9 router", lambda etcd: faults.kill_router(c, 1)),
        ("kill -9 etcd leader", lambda etcd: faults.kill_etcd_leader(c, etcd_cluster)),
        ("SIGSTOP etcd leader 20 s", lambda etcd: faults.freeze_etcd_leader(c, etcd_cluster)),
    ]
    if not quick:
        plan.insert(
            2,
            (
                "kill -9 staging leader mid-staging",
                lambda etcd: faults.kill_staging_leader_mid_staging(c, "bench-stage"),
            ),
        )
        plan.insert(
            3,
            (
                "kill -9 builds leader mid-build",
                lambda etcd: faults.kill_builds_leader_mid_build(c, git),
            ),
        )
        plan.append(
            ("SIGSTOP node past eviction", lambda etcd: faults.freeze_node_past_eviction(c, etcd))
        )
    rows: list[Row] = []
    writers: list[Writer] = []
    git = GitServer(c.h.tmp / "git", USER, TOKEN)
    await git.start()
    async with (
        RawEtcd(etcd_cluster.endpoints, tls=etcd_cluster.tls) as etcd,
        Stream(c, 0) as one,
        Stream(c, 1) as two,
    ):
        for i, (name, fault) in enumerate(plan):
            say(f"fault: {name}")
            async with (
                RouterLoad(c.router_ports) as load,
                Writer(c, f"bench{i}") as writer,
                Reader(c) as reader,
            ):
                await asyncio.sleep(3)
                healed = await fault(etcd)
                await asyncio.sleep(2)
            writers.append(writer)
            lost = await writer.problems(etcd)
            for problem in lost[:5]:
                say(f"  lost: {problem}")
            rows.append(
                Row(
                    name,
                    load.sent,
                    load.failed,
                    reader.sent,
                    reader.failed,
                    writer.acknowledged,
                    writer.unacknowledged,
                    len(lost),
                    healed.seconds,
                )
            )
            say(f"  {load.figure()}; {writer.figure()}; converged in {healed.seconds:.1f} s")
        # the streams catch up: a create still missing 15 s after the last write is lost
        with contextlib.suppress(AssertionError):
            await eventually(
                lambda: not any(s.missed(w) for s in (one, two) for w in writers), 15, "caught up"
            )
    await git.stop()
    for number, stream in enumerate((one, two)):
        for w in writers:
            for name in stream.missed(w):
                say(f"  SSE client {number} (on API {stream.index % 2} at the end) missed {name}")
    missed = sum(len(s.missed(w)) for s in (one, two) for w in writers)
    creates = sum(len(w.created) for w in writers)
    streams = (
        f"SSE clients: {one.events + two.events} events, {missed} of the {creates} acknowledged "
        f"creates missed (by either), {one.repeated + two.repeated} "
        f"repeated, {one.disordered + two.disordered} out of revision order, "
        f"{one.reconnects + two.reconnects} reconnects, {one.relists + two.relists} relists"
    )
    return f"{table(rows)}\n\n{streams}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="no eviction, staging or build fault")
    args = parser.parse_args()
    if os.geteuid() != 0:
        say("needs root (a second dockerd)")
        return 2
    url = os.environ.get("DOCKER_HOST") or DEFAULT_URL
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        base = Path(tmp)
        etcd_cluster = EtcdCluster(base / "etcd")
        etcd_cluster.start_all()
        try:
            with contextlib.closing(api_client(url)) as first:
                ensure_base_image(first)
                with (
                    extra_engine(url, [BASE_IMAGE], "lbbench0", "10.213.10.1/24") as second_url,
                    contextlib.closing(api_client(second_url)) as second,
                ):
                    print(bench(base, etcd_cluster, (url, first), (second_url, second), args.quick))
        finally:
            etcd_cluster.close()
    return 0


def bench(
    base: Path,
    etcd_cluster: EtcdCluster,
    first: tuple[str, docker.APIClient],
    second: tuple[str, docker.APIClient],
    quick: bool,
) -> str:
    (base / "cluster").mkdir()
    h = Harness(base / "cluster", *first)
    engines = [Engine(*first, f"{h.node}-0"), Engine(*second, f"{h.node}-1")]
    flags = etcd_cluster.flags()
    c = Cluster(h, flags[1], engines, flags[2:])
    try:
        started = time.monotonic()
        say("starting the cluster")
        asyncio.run(c.start())
        say(f"cluster up in {time.monotonic() - started:.1f} s")
        return asyncio.run(run(c, etcd_cluster, quick))
    finally:
        c.cleanup()


if __name__ == "__main__":
    sys.exit(main())
