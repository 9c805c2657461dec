"""Latency of the event stream: a PUT acknowledged -> its server-sent event received.

What it measures, on loopback only:

1. A private etcd (:class:`~lastbackend.store.embedded.EmbeddedEtcd` in a temporary directory, on
   free ports) and ``lastbackend api`` as a separate process, started as ``bench_api.py`` starts
   them (``LB_LOG_LEVEL=warning``: no per-request access log).
2. For each row, ``streams`` clients hold ``GET /api/events?prefix=repos/bench/`` open (each has
   had its ``hello``) while ``writers`` workers send 500 ``PUT /api/repos/bench/branches/main/
   tags/<t>`` (a new tag each: one etcd transaction, one ``created`` event), back to back.
3. Per change and stream: *ack -> event* is the time from the PUT's response to the event for
   that tag arriving on the stream (0 when the event came first: it can, since etcd sends the
   watch event as it answers the write), and *send -> event* from the PUT being sent. Both
   clocks are this process's ``time.perf_counter``. Every stream must get every change exactly
   once; the table counts what was lost or repeated.

The load generator, the API and etcd share the machine's cores, so the numbers are an upper bound
of the latency on a quiet machine. The issue's aim is p99 ack -> event under 50 ms, judged on the
first row (one writer, one stream).

Run from the repository root::

    .venv/bin/python tests/bench/bench_events.py           # ~20 seconds
    .venv/bin/python tests/bench/bench_events.py --quick   # 100 changes per row
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import aiohttp

# The sibling benchmark's process helpers (this file runs as a script, from its own directory).
from bench_api import cpu_seconds, machine_busy, start_api, stop_process, wait_ready

from lastbackend.store.embedded import EmbeddedEtcd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support import RawEtcd, free_port, local_etcd

HOST = "127.0.0.1"
CHANGES = 500
ROWS = ((1, 1), (16, 1), (1, 10))
"""(writers, streams) per row."""
MODES = ("thread", "loop")
"""Each row is run against an API reading its watches on its watch thread, then against one
reading them on its event loop (``etcd.watch_thread = false``): the comparison of issue 17."""
REPO, BRANCH = "bench", "main"
AIM_MS = 50.0
TIMEOUT = 30.0
NOISY = 0.25


def tag_key(tag: str) -> str:
    return f"/lastbackend/repos/{REPO}/branches/{BRANCH}/tags/{tag}/meta"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1000


@dataclass
class Listener:
    """One open stream: when each tag's event arrived, and how many arrived twice."""

    response: aiohttp.ClientResponse
    arrived: dict[str, float] = field(default_factory=dict)
    repeats: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self, prefix: str) -> None:
        async for line in self.response.content:
            if not line.startswith(b"data: "):
                continue
            now = time.perf_counter()
            key = json.loads(line[6:])["key"]
            if not key.startswith(prefix):
                continue
            tag = key[len(prefix) :].split("/", 1)[0]
            if tag in self.arrived:
                self.repeats += 1
            else:
                self.arrived[tag] = now
            self.changed.set()

    async def wait_for(self, tags: set[str]) -> None:
        while not tags <= self.arrived.keys():
            self.changed.clear()
            await self.changed.wait()


@dataclass
class Row:
    mode: str
    writers: int
    streams: int
    changes: int
    put: list[float]  # seconds, send -> ack
    ack_event: list[float]  # seconds, per change and stream
    send_event: list[float]
    raw: list[float]  # seconds, ack -> the same change seen by an etcd watch in this process
    first: int  # events that arrived before their PUT's response
    lost: int
    repeats: int
    other: float  # cores the rest of the machine used meanwhile
    api_cpu: float  # cores the API process used meanwhile: near 1, it is saturated


async def open_stream(http: aiohttp.ClientSession, base: str) -> Listener:
    resp = await http.get(f"{base}/api/events", params={"prefix": f"repos/{REPO}/"})
    if resp.status != 200:
        raise RuntimeError(f"/api/events answered {resp.status}: {await resp.text()}")
    while (await resp.content.readline()).strip() != b"":  # the hello event
        pass
    return Listener(resp)


async def raw_watch(etcd: RawEtcd, prefix: str, start: int, arrived: dict[str, float]) -> None:
    """The baseline: the store's own watch, in this process, on the API's etcd."""
    async for events in etcd.watch(prefix, start_revision=start):
        now = time.perf_counter()
        for event in events:
            arrived.setdefault(event.kv.key[len(prefix) :].split("/", 1)[0], now)


async def run_row(
    http: aiohttp.ClientSession,
    etcd: RawEtcd,
    base: str,
    pids: list[int | None],
    row: str,
    mode: str,
    writers: int,
    streams: int,
    changes: int,
) -> Row:
    """``pids``: this process (None), the API's and etcd's, whose CPU is not "other load"."""
    listeners = [await open_stream(http, base) for _ in range(streams)]
    prefix = f"/lastbackend/repos/{REPO}/branches/{BRANCH}/tags/"
    readers = [asyncio.create_task(lst.read(prefix)) for lst in listeners]
    raw: dict[str, float] = {}
    readers.append(asyncio.create_task(raw_watch(etcd, prefix, await etcd.status() + 1, raw)))
    tags = [f"r{row}-{n:04}" for n in range(changes)]
    sent: dict[str, float] = {}
    acked: dict[str, float] = {}
    queue = iter(tags)
    before = {pid: cpu_seconds(pid) for pid in pids}
    busy = machine_busy()
    started = time.perf_counter()

    async def writer() -> None:
        for tag in queue:
            url = f"{base}/api/repos/{REPO}/branches/{BRANCH}/tags/{tag}"
            sent[tag] = time.perf_counter()
            async with http.put(url, json={"build_id": tag, "commit_id": "c0ffee"}) as resp:
                await resp.read()
                acked[tag] = time.perf_counter()
                if resp.status != 200:
                    raise RuntimeError(f"PUT {url}: {resp.status}")

    try:
        await asyncio.gather(*(writer() for _ in range(writers)))
        wanted = set(tags)
        with_timeout = asyncio.wait_for(
            asyncio.gather(*(lst.wait_for(wanted) for lst in listeners)), TIMEOUT
        )
        with contextlib.suppress(TimeoutError):
            await with_timeout  # what did not arrive is counted as lost below
        seconds = time.perf_counter() - started
        spent = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
        ours = sum(spent.values())
        api_cpu = spent[pids[1]] / seconds
        other = max(0.0, machine_busy() - busy - ours) / seconds
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for lst in listeners:
            lst.response.close()

    ack_event, send_event, first, lost = [], [], 0, 0
    for lst in listeners:
        for tag in tags:
            at = lst.arrived.get(tag)
            if at is None:
                lost += 1
                continue
            first += at < acked[tag]
            ack_event.append(max(0.0, at - acked[tag]))
            send_event.append(at - sent[tag])
    put = [acked[t] - sent[t] for t in tags]
    raw_lag = [max(0.0, raw[t] - acked[t]) for t in tags if t in raw]
    repeats = sum(lst.repeats for lst in listeners)
    result = Row(
        mode,
        writers,
        streams,
        changes,
        put,
        ack_event,
        send_event,
        raw_lag,
        first,
        lost,
        repeats,
        other,
        api_cpu,
    )
    print(
        f"  {mode:<6} writers={writers:<3} streams={streams:<3} ack->event p50 "
        f"{percentile(ack_event, 0.5):6.2f} ms p99 {percentile(ack_event, 0.99):6.2f} ms  "
        f"lost {lost} repeated {repeats}",
        file=sys.stderr,
        flush=True,
    )
    return result


async def run(
    endpoint: str, base: str, pids: list[int | None], mode: str, changes: int
) -> list[Row]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http, RawEtcd([endpoint]) as etcd:
        # the repo and branch exist first, so each measured PUT writes one key
        url = f"{base}/api/repos/{REPO}/branches/{BRANCH}/tags/warmup"
        for _ in range(20):
            async with http.put(url, json={"build_id": "warmup"}) as resp:
                await resp.read()
        return [
            await run_row(http, etcd, base, pids, f"{mode}{i}", mode, writers, streams, changes)
            for i, (writers, streams) in enumerate(ROWS)
        ]


def table(rows: list[Row]) -> str:
    head = (
        "| watch read on | writers | streams | changes | events | lost | repeated "
        "| PUT p50 ms | PUT p99 ms "
        "| ack->event p50 ms | ack->event p99 ms | max ms | send->event p50 ms "
        "| send->event p99 ms | event before ack | etcd watch ack->event p50 / p99 ms "
        "| API CPU | other load |"
    )
    lines = [head, "|---|" + "---:|" * 17]
    for r in rows:
        lines.append(
            f"| {r.mode} | {r.writers} | {r.streams} | {r.changes} | {len(r.ack_event)} | {r.lost} "
            f"| {r.repeats} | {percentile(r.put, 0.5):.2f} | {percentile(r.put, 0.99):.2f} "
            f"| {percentile(r.ack_event, 0.5):.2f} | {percentile(r.ack_event, 0.99):.2f} "
            f"| {percentile(r.ack_event, 1.0):.2f} | {percentile(r.send_event, 0.5):.2f} "
            f"| {percentile(r.send_event, 0.99):.2f} | {r.first} "
            f"| {percentile(r.raw, 0.5):.2f} / {percentile(r.raw, 0.99):.2f} "
            f"| {r.api_cpu:.2f} | {r.other:.2f} |"
        )
    return "\n".join(lines)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_mode(server: EmbeddedEtcd, work: Path, mode: str, changes: int) -> list[Row]:
    """Every row against a fresh ``lastbackend api`` reading its watches the ``mode`` way."""
    api_log = work / f"api-{mode}.log"
    api: subprocess.Popen[bytes] | None = None
    try:
        listen = f"{HOST}:{free_port()}"
        env = {"LB_ETCD_WATCH_THREAD": "true" if mode == "thread" else "false"}
        api = start_api(server.endpoint, listen, api_log, env)
        base = f"http://{listen}"
        wait_ready(api, base, api_log)
        print(f"etcd {server.endpoint}, API {base} (pid {api.pid}, {mode})", file=sys.stderr)
        pids = [None, api.pid, server.proc.pid if server.proc else None]
        rows = asyncio.run(run(server.endpoint, base, pids, mode, changes))
        if api.poll() is not None:
            raise RuntimeError("the API exited during the run")
        return rows
    except Exception:
        print(f"--- API log tail ---\n{api_log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        stop_process(api)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 changes per row, not 500")
    args = parser.parse_args(argv)
    changes = 100 if args.quick else CHANGES
    if shutil.which("etcd") is None:
        print("bench_events: the etcd binary is not on PATH (Debian: etcd-server)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)

    with tempfile.TemporaryDirectory(prefix="lb-bench-events-") as tmp:
        work = Path(tmp)
        server = local_etcd(work / "etcd-data", work / "etcd.log")
        rows: list[Row] = []
        try:
            server.start(timeout=30)
            for mode in MODES:
                rows += run_mode(server, work, mode, changes)
        finally:
            server.stop()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    print(
        f"\n## lastbackend event stream benchmark{' (--quick)' if args.quick else ''}\n\n"
        f"Python {platform.python_version()}, {os.cpu_count()} cores shared by this client, the "
        f"API process and etcd; loopback only. Each row: {changes} tag PUTs "
        f"(`PUT /api/repos/{REPO}/branches/{BRANCH}/tags/<t>`, a new tag each) by `writers` "
        f"concurrent workers, seen on `streams` open `GET /api/events?prefix=repos/{REPO}/`. "
        f"ack->event counts an event that came before its PUT's response as 0. The etcd watch "
        f"column is the baseline: the same changes seen by the store's watch in the benchmark "
        f"process, so the difference is what the API adds. API CPU is the cores the API process "
        f"used (one core is all its event loop can use). Other load is "
        f"what the rest of the machine used meanwhile, in cores. Load average at the end: "
        f"{load:.2f}.\n"
    )
    print(table(rows))
    print("\n### Aims\n")
    for writers in (1, 16):
        aim = next(r for r in rows if r.mode == "thread" and r.writers == writers)
        loop = next(r for r in rows if r.mode == "loop" and r.writers == writers)
        p99 = percentile(aim.ack_event, 0.99)
        verdict = "PASS" if p99 < AIM_MS and not aim.lost and not aim.repeats else "MISS"
        print(
            f"- p99 PUT acknowledged -> SSE event received < {AIM_MS:g} ms ({writers} writer(s), "
            f"1 stream, none lost): {p99:.2f} ms -> {verdict} (read on the loop: "
            f"{percentile(loop.ack_event, 0.99):.2f} ms)"
        )
    for r in rows:
        if r.lost or r.repeats:
            print(f"- writers={r.writers} streams={r.streams}: {r.lost} lost, {r.repeats} repeated")
    if max(r.other for r in rows) > NOISY:
        print(
            "\nWARNING: other processes were busy during the rows; p99 above all measures a "
            "shared machine. Run it again when the machine is idle."
        )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
