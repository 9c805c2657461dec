"""Throughput and latency of the projects API against the raw etcd client it is built on.

What it measures, in one run, on loopback only:

1. A private etcd (:class:`~lastbackend.store.embedded.EmbeddedEtcd` in a temporary directory, on
   free ports) and ``lastbackend api --etcd ... --listen 127.0.0.1:<free>`` as a separate process,
   run with ``LB_LOG_LEVEL=warning`` so the per-request access log (an info line) is not written.
2. The raw etcd client, :class:`lastbackend.store.etcd.Etcd` (the seam the API uses), in this
   process: ``get`` of an existing key, ``put``, and a create-shaped ``txn`` (compare one key
   absent, put two keys), at concurrency 1, 16 and 64.
3. The API through an aiohttp client whose keep-alive pool is sized to the concurrency:
   ``GET /api/projects/{name}`` over 1,000 pre-created projects, ``GET /api/projects?page=N&
   per_page=50`` over the same 1,000 (and at concurrency 16 over 10,000, the other 9,000 written
   straight into etcd as the store writes them), and ``POST /api/projects`` with unique names, at
   concurrency 1, 16 and 64. Every response's status is checked (200/200/201) and anything else,
   or an exception, is counted as an error. Build tags: 300 tags of 2 artifacts each (10 repos
   of 3 branches of 10 tags, PUT through the API), ``GET`` of one tag at concurrency 16 (after a
   raw get at 16) and ``GET /api/data`` (all of them nested) at concurrency 1. For each API row
   the API's ``/metrics`` tell how its reads were answered: from the read cache (``memory``) or
   etcd, and how many current-revision reads of etcd they took (one serves every request
   waiting at the time).

Each row is a closed loop of ``concurrency`` workers for a fixed duration (3 s, or 1 s with
``--quick``) after a short warm-up; each API row runs right after the raw row it is compared with
(GET by name after raw get, POST after raw txn), so both see the same conditions. It prints a
markdown table (requests, errors, req/s, p50/p99 latency, API/raw rate ratio, CPU time per request
of the client, API and etcd processes, and the CPU the rest of the machine used meanwhile) and then
the issue's three aims with PASS/MISS. Progress goes to stderr, the report to stdout.

The load generator, the API and etcd share the machine's cores, so the numbers are a lower bound
of what the API does on its own and a fair comparison only between rows of the same run.

Run from the repository root::

    .venv/bin/python tests/bench/bench_api.py           # ~2.5 minutes
    .venv/bin/python tests/bench/bench_api.py --quick   # ~1 minute
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
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
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import aiohttp
from yarl import URL

from lastbackend import codec
from lastbackend.model.common import new_id, now
from lastbackend.model.platform import Meta
from lastbackend.store import keys
from lastbackend.store.etcd import Cmp, Op

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support import RawEtcd, free_port, local_etcd

HOST = "127.0.0.1"
PROJECTS = 1000
MANY_PROJECTS = 10_000
PER_PAGE = 50
RAW_KEYS = 1000
RAW_CONCURRENCY = (1, 16, 64)
API_CONCURRENCY = (1, 16, 64)
REQUEST_TIMEOUT = 10.0
NOISY = 0.25  # cores used by other processes during a row above which the run is flagged
# A value about the size of a project's stored meta, so raw and API move similar bytes.
META_VALUE = json.dumps(
    {
        "name": "bench-0000",
        "created": "2026-01-01T00:00:00.000000Z",
        "updated": "2026-01-01T00:00:00.000000Z",
        "description": "benchmark project",
    },
    separators=(",", ":"),
).encode()

# One operation: takes a sequence number unique within the run, returns True on success.
Operation = Callable[[int], Awaitable[bool]]


@dataclass
class Result:
    operation: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies: list[float]  # seconds, one per request (errors included)
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds spent
    raw: str | None = None  # the raw operation this API row is compared with
    cache: str = "-"  # how the API answered the row's reads (from its /metrics)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile in milliseconds."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1000


# processes --------------------------------------------------------------------------------------


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _api_command() -> list[str]:
    script = Path(sys.executable).parent / "lastbackend"
    if script.exists():
        return [str(script)]
    found = shutil.which("lastbackend")
    return [found] if found else [sys.executable, "-m", "lastbackend.cli"]


def start_api(
    etcd_endpoint: str, listen: str, log: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    env["LB_LOG_LEVEL"] = "warning"
    env.update(extra_env or {})
    cmd = [*_api_command(), "api", "--etcd", etcd_endpoint, "--listen", listen]
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,
        )


def wait_ready(proc: subprocess.Popen[bytes], base: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the API at {base} is not ready after {timeout}s:\n{_tail(log)}")


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (this one when ``pid`` is None); NaN if unknown."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    except (OSError, IndexError, ValueError):
        return math.nan


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every process, every core); NaN if unknown."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK


# the load loop ----------------------------------------------------------------------------------


async def closed_loop(
    op: Operation, counter: Iterator[int], concurrency: int, duration: float
) -> tuple[int, int, float, list[float]]:
    """``concurrency`` workers calling ``op`` back to back until ``duration`` has passed."""
    latencies: list[float] = []
    errors = 0
    clock = time.perf_counter

    async def worker(deadline: float) -> None:
        nonlocal errors
        while clock() < deadline:
            n = next(counter)
            started = clock()
            try:
                ok = await op(n)
            except Exception:
                ok = False
            latencies.append(clock() - started)
            if not ok:
                errors += 1

    started = clock()
    await asyncio.gather(*(worker(started + duration) for _ in range(concurrency)))
    return len(latencies), errors, clock() - started, latencies


async def measure(
    name: str,
    op: Operation,
    counter: Iterator[int],
    concurrency: int,
    duration: float,
    warmup: float,
    pids: dict[str, int | None],
    raw: str | None = None,
) -> Result:
    await closed_loop(op, counter, concurrency, warmup)
    before = {proc: cpu_seconds(pid) for proc, pid in pids.items()}
    busy = machine_busy()
    requests, errors, seconds, latencies = await closed_loop(op, counter, concurrency, duration)
    cpu = {proc: cpu_seconds(pid) - before[proc] for proc, pid in pids.items()}
    # Everything else the machine did meanwhile, in cores: other people's load makes noise.
    cpu["other"] = max(0.0, machine_busy() - busy - sum(cpu.values())) / seconds
    result = Result(name, concurrency, requests, errors, seconds, latencies, cpu, raw)
    print(
        f"  {name:<34} c={concurrency:<3} {result.rate:9.0f} req/s  "
        f"p50 {result.percentile(0.5):7.2f} ms  p99 {result.percentile(0.99):7.2f} ms  "
        f"errors {errors}  other load {cpu['other']:.2f} cores",
        file=sys.stderr,
        flush=True,
    )
    return result


# raw etcd ---------------------------------------------------------------------------------------

RAW_GET = "etcd get"
RAW_PUT = "etcd put"
RAW_TXN = "etcd txn (1 absent cmp, 2 puts)"
RAW_GET_AGAIN = "etcd get (again, before the tag row)"
RAW_OPERATIONS = (RAW_GET, RAW_PUT, RAW_TXN, RAW_GET_AGAIN)


class RawOps:
    """The three raw operations, on keys under ``/bench/<tag>/`` (outside the API's tree)."""

    def __init__(self, etcd: RawEtcd, tag: str) -> None:
        self.etcd = etcd
        self.tag = tag
        self.get_keys = [f"/bench/{tag}/get/{i:04d}" for i in range(RAW_KEYS)]
        self.put_keys = [f"/bench/{tag}/put/{i:04d}" for i in range(RAW_KEYS)]

    async def setup(self) -> None:
        for start in range(0, RAW_KEYS, 100):
            chunk = self.get_keys[start : start + 100]
            await self.etcd.txn([], [Op.put(k, META_VALUE) for k in chunk])

    async def get(self, n: int) -> bool:
        return await self.etcd.get(self.get_keys[n % RAW_KEYS]) is not None

    async def put(self, n: int) -> bool:
        return await self.etcd.put(self.put_keys[n % RAW_KEYS], META_VALUE) > 0

    async def txn(self, n: int) -> bool:
        index = f"/bench/{self.tag}/txn/index/{n}"
        meta = f"/bench/{self.tag}/txn/objects/{n}/meta"
        result = await self.etcd.txn(
            [Cmp.absent(index)], [Op.put(index, str(n)), Op.put(meta, META_VALUE)]
        )
        return result.succeeded


# the API ----------------------------------------------------------------------------------------

API_GET = "GET /api/projects/{name}"
API_LIST = f"GET /api/projects?page=N&per_page={PER_PAGE}"
API_LIST_MANY = f"{API_LIST} (10,000)"
API_TAG = "GET /api/repos/{r}/branches/{b}/tags/{t}"
API_DATA = "GET /api/data (300 tags, 600 artifacts)"
API_SERVICE = "GET /api/projects/{p}/services/{name}"
SERVICES = 50
TAG_SHAPE = (10, 3, 10)  # repos, branches per repo, tags per branch: 300 tags
ARTIFACT = {"type": "file", "url": "https://files.example.com/bench.zip"}
API_POST = "POST /api/projects"
JSON = {"Content-Type": "application/json"}
OperationFactory = Callable[[aiohttp.ClientSession], Operation]


def session_for(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=concurrency, limit_per_host=concurrency, keepalive_timeout=60
    )
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    )


class ApiOps:
    """The three API operations; each factory binds one to a session sized for a row."""

    def __init__(self, base: URL, tag: str) -> None:
        self.base = base
        self.tag = tag
        self.names = [f"bench-{tag}-{i:04d}" for i in range(PROJECTS)]
        # Precomputed, already-encoded URLs: yarl does not re-parse them on every request.
        self.get_urls = [URL(str(base / "api/projects" / n), encoded=True) for n in self.names]
        self.pages = PROJECTS // PER_PAGE
        self.list_urls = [
            URL(f"{base / 'api/projects'}?page={p}&per_page={PER_PAGE}", encoded=True)
            for p in range(1, self.pages + 1)
        ]
        self.post_url = URL(str(base / "api/projects"), encoded=True)
        self.post_prefix = f'{{"name":"c{tag}-'.encode()

    async def setup(self) -> None:
        """Create the projects that GET and list read, through the API, and check the URLs."""
        started = time.perf_counter()
        url = self.base / "api/projects"
        failures: list[str] = []
        async with session_for(64) as session:
            sem = asyncio.Semaphore(64)

            async def create(name: str) -> None:
                payload = json.dumps({"name": name, "description": "benchmark project"}).encode()
                async with sem, session.post(url, data=payload, headers=JSON) as resp:
                    text = await resp.text()
                    if resp.status != 201:
                        failures.append(f"{name}: {resp.status} {text[:200]}")

            await asyncio.gather(*(create(n) for n in self.names))
        if failures:
            raise RuntimeError(f"{len(failures)} projects not created, e.g. {failures[0]}")
        print(
            f"  seeded {PROJECTS} projects through the API in "
            f"{time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        await self.sanity_check()

    async def sanity_check(self) -> None:
        """The URLs the rows hit answer what they should, so no row silently measures errors."""
        async with session_for(1) as session:
            async with session.get(self.get_urls[-1]) as resp:
                data = await resp.json()
                if resp.status != 200 or data.get("name") != self.names[-1]:
                    raise RuntimeError(f"GET by name: {resp.status} {data}")
            async with session.get(self.list_urls[-1]) as resp:
                data = await resp.json()
                total = data.get("pagination", {}).get("total_results")
                got = (total, len(data.get("resources", [])))
                if resp.status != 200 or got != (PROJECTS, PER_PAGE):
                    raise RuntimeError(f"list: {resp.status}, (total, page size) = {got}")
            async with session.get(self.base / "api/projects/no-such-project-here") as resp:
                await resp.read()
                if resp.status != 404:
                    raise RuntimeError(f"GET of a missing project answered {resp.status}, not 404")

    def get(self, session: aiohttp.ClientSession) -> Operation:
        urls = self.get_urls

        async def op(n: int) -> bool:
            async with session.get(urls[n % PROJECTS]) as resp:
                await resp.read()
                return resp.status == 200

        return op

    async def add_many(self, etcd: RawEtcd) -> None:
        """Grow to :data:`MANY_PROJECTS` projects, the rest written straight into etcd (each
        one's name index key and meta in the same txn, as the store writes them, 50 to a txn),
        then wait until the API lists them all."""
        started = time.perf_counter()
        t = now()
        ops: list[Op] = []
        for i in range(PROJECTS, MANY_PROJECTS):
            pid, name = new_id(), f"bench-{self.tag}-{i:05d}"
            meta = Meta(name, t, t, "benchmark project")
            ops += [
                Op.put(keys.project_name(name), pid),
                Op.put(keys.project_meta(pid), codec.dumps(meta)),
            ]
            if len(ops) >= 100:
                await etcd.txn([], ops)
                ops = []
        if ops:
            await etcd.txn([], ops)
        self.pages_many = MANY_PROJECTS // PER_PAGE
        self.list_many_urls = [
            URL(f"{self.base / 'api/projects'}?page={p}&per_page={PER_PAGE}", encoded=True)
            for p in range(1, self.pages_many + 1)
        ]
        async with session_for(1) as session:
            for _ in range(100):
                async with session.get(self.list_many_urls[-1]) as resp:
                    total = (await resp.json())["pagination"]["total_results"]
                if total == MANY_PROJECTS:
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"the API lists {total} projects, not {MANY_PROJECTS}")
        print(
            f"  grew to {MANY_PROJECTS} projects in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )

    async def add_tags(self) -> None:
        """The build tags the tag rows read, PUT through the API."""
        repos, branches, tags = TAG_SHAPE
        paths = [
            f"api/repos/r{self.tag}-{r}/branches/b{b}/tags/t{t}"
            for r in range(repos)
            for b in range(branches)
            for t in range(tags)
        ]
        async with session_for(16) as session:
            sem = asyncio.Semaphore(16)

            async def put(n: int, path: str) -> None:
                body = {
                    "build_id": str(n),
                    "build_url": f"https://ci.example.com/job/{n}",
                    "commit_id": f"{n:07x}",
                    "artifacts": {"a.zip": ARTIFACT, "b.zip": ARTIFACT},
                }
                async with sem, session.put(self.base / path, json=body) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"PUT {path}: {resp.status} {await resp.text()}")

            await asyncio.gather(*(put(n, p) for n, p in enumerate(paths)))
        self.tag_urls = [URL(str(self.base / p), encoded=True) for p in paths]
        self.data_url = URL(str(self.base / "api/data"), encoded=True)
        async with session_for(1) as session, session.get(self.data_url) as resp:
            data = await resp.json()
        found = sum(len(b["tags"]) for r in data["repos"].values() for b in r["branches"].values())
        if found < len(paths):
            raise RuntimeError(f"/api/data has {found} tags, not {len(paths)}")

    async def add_services(self) -> None:
        """The services the service row reads: one project's, with an env, through the API."""
        project = self.names[0]
        base = self.base / "api/projects" / project / "services"
        async with session_for(16) as session:
            for n in range(SERVICES):
                body = {"name": f"s{n}", "config": {"env": {"GREETING": "hello"}}}
                async with session.post(base, json=body) as resp:
                    if resp.status != 201:
                        raise RuntimeError(f"POST {base}: {resp.status} {await resp.text()}")
            async with session.get(base / f"s{SERVICES - 1}") as resp:
                if resp.status != 200 or (await resp.json())["name"] != f"s{SERVICES - 1}":
                    raise RuntimeError(f"GET of a service answered {resp.status}")
        self.service_urls = [URL(str(base / f"s{n}"), encoded=True) for n in range(SERVICES)]

    def get_service(self, session: aiohttp.ClientSession) -> Operation:
        urls = self.service_urls

        async def op(n: int) -> bool:
            async with session.get(urls[n % SERVICES]) as resp:
                await resp.read()
                return resp.status == 200

        return op

    def get_tag(self, session: aiohttp.ClientSession) -> Operation:
        urls = self.tag_urls

        async def op(n: int) -> bool:
            async with session.get(urls[n % len(urls)]) as resp:
                await resp.read()
                return resp.status == 200

        return op

    def get_data(self, session: aiohttp.ClientSession) -> Operation:
        url = self.data_url

        async def op(n: int) -> bool:
            async with session.get(url) as resp:
                await resp.read()
                return resp.status == 200

        return op

    def list_many(self, session: aiohttp.ClientSession) -> Operation:
        urls, pages = self.list_many_urls, self.pages_many

        async def op(n: int) -> bool:
            async with session.get(urls[n % pages]) as resp:
                await resp.read()
                return resp.status == 200

        return op

    def list(self, session: aiohttp.ClientSession) -> Operation:
        urls, pages = self.list_urls, self.pages

        async def op(n: int) -> bool:
            async with session.get(urls[n % pages]) as resp:
                await resp.read()
                return resp.status == 200

        return op

    def post(self, session: aiohttp.ClientSession) -> Operation:
        url, prefix = self.post_url, self.post_prefix

        async def op(n: int) -> bool:
            payload = prefix + str(n).encode() + b'"}'
            async with session.post(url, data=payload, headers=JSON) as resp:
                await resp.read()
                return resp.status == 201

        return op


# report -----------------------------------------------------------------------------------------


def find(results: list[Result], operation: str, concurrency: int) -> Result | None:
    for r in results:
        if r.operation == operation and r.concurrency == concurrency:
            return r
    return None


def ratio(result: Result, results: list[Result]) -> float | None:
    if result.raw is None:
        return None
    raw = find(results, result.raw, result.concurrency)
    return result.rate / raw.rate if raw and raw.rate else None


def table(results: list[Result]) -> str:
    header = (
        "| operation | conc. | requests | errors | req/s | p50 ms | p99 ms | API/raw "
        "| CPU µs/req client | CPU µs/req API | CPU µs/req etcd | other load (cores) "
        "| answered from |"
    )
    lines = [header, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]

    def per_request(r: Result, proc: str) -> str:
        value = r.cpu.get(proc, math.nan)
        if math.isnan(value) or not r.requests:
            return "n/a"
        return f"{value / r.requests * 1e6:.0f}"

    for r in results:
        rr = ratio(r, results)
        if r.operation in RAW_OPERATIONS:
            shown = "-"
        elif rr is None or r.raw is None:
            shown = "n/a"
        else:
            shown = f"{rr:.0%} of {r.raw.split(' (')[0]}"
        lines.append(
            f"| `{r.operation}` | {r.concurrency} | {r.requests} | {r.errors} | {r.rate:.0f} "
            f"| {r.percentile(0.5):.2f} | {r.percentile(0.99):.2f} | {shown} "
            f"| {per_request(r, 'client')} | {per_request(r, 'api')} | {per_request(r, 'etcd')} "
            f"| {r.cpu.get('other', math.nan):.2f} | {r.cache} |"
        )
    return "\n".join(lines)


def aims(results: list[Result]) -> list[str]:
    out = []

    def rate_aim(label: str, operation: str, target: float, concurrency: int = 64) -> None:
        r = find(results, operation, concurrency)
        rr = ratio(r, results) if r else None
        raw = find(results, r.raw, concurrency) if r and r.raw else None
        if r is None or rr is None or raw is None:
            out.append(f"- MISS {label}: not measured")
            return
        errors = r.errors + raw.errors
        verdict = "PASS" if rr >= target and errors == 0 else "MISS"
        note = f"; {errors} errors" if errors else ""
        out.append(
            f"- {verdict} {label} (aim >= {target:.0%}): {rr:.1%} "
            f"({r.rate:.0f} vs {raw.rate:.0f} req/s{note})"
        )

    rate_aim("GET by name vs raw etcd get at concurrency 64", API_GET, 0.80)
    rate_aim("GET of one build tag vs raw etcd get at concurrency 16", API_TAG, 0.80, 16)
    rate_aim("create (POST) vs raw etcd txn at concurrency 64", API_POST, 0.40)
    for operation, limit in ((API_GET, 50), (API_POST, 50), (API_LIST, 20), (API_LIST_MANY, 30)):
        r = find(results, operation, 16)
        if r is None:
            out.append(f"- MISS p99 < {limit} ms at concurrency 16, `{operation}`: not measured")
            continue
        p99 = r.percentile(0.99)
        verdict = "PASS" if p99 < limit and r.errors == 0 else "MISS"
        note = f"; {r.errors} errors" if r.errors else ""
        out.append(
            f"- {verdict} p99 < {limit} ms at concurrency 16, `{operation}`: {p99:.2f} ms{note}"
        )
    r = find(results, API_DATA, 1)
    if r is None:
        out.append(f"- MISS p99 < 10 ms at concurrency 1, `{API_DATA}`: not measured")
    else:
        verdict = "PASS" if r.percentile(0.99) < 10 and r.errors == 0 else "MISS"
        out.append(
            f"- {verdict} p99 < 10 ms at concurrency 1, `{API_DATA}`: {r.percentile(0.99):.2f} ms"
        )
    return out


async def cache_counters(base: URL) -> dict[str, float]:
    """The API's read-cache counters from its ``/metrics``."""
    async with session_for(1) as session, session.get(base / "metrics") as resp:
        text = await resp.text()
    found = {}
    for line in text.splitlines():
        for name, metric in (
            ("memory", 'lastbackend_api_cache_reads{answer="memory"}'),
            ("etcd", 'lastbackend_api_cache_reads{answer="etcd"}'),
            ("revisions", "lastbackend_api_cache_revision_reads"),
        ):
            if line.startswith(metric + " "):
                found[name] = float(line.split()[-1])
    return found


def cache_note(before: dict[str, float], after: dict[str, float]) -> str:
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("memory", "etcd", "revisions")}
    reads = delta["memory"] + delta["etcd"]
    if not reads:
        return "etcd (not cached)"
    return (
        f"memory {delta['memory'] / reads:.0%}, {delta['revisions'] / reads:.2f} revision reads/req"
    )


# main -------------------------------------------------------------------------------------------


async def run(
    etcd_endpoint: str, base: URL, duration: float, warmup: float, pids: dict[str, int | None]
) -> list[Result]:
    """Every row; each API row runs right after the raw row it is compared with.

    Back-to-back pairs see the same conditions (a noisy neighbour, etcd's growing database), so
    the ratio is fairer than between two blocks measured a minute apart. All GETs and lists run
    before the creates, which grow the project count past 1,000.
    """
    tag = f"{os.getpid():x}{int(time.time()) % 100000:x}"
    results: list[Result] = []

    async def raw_row(name: str, op: Operation, counter: Iterator[int], c: int) -> None:
        results.append(await measure(name, op, counter, c, duration, warmup, pids))

    async def api_row(
        name: str, make: OperationFactory, counter: Iterator[int], c: int, raw: str | None
    ) -> None:
        async with session_for(c) as session:
            op = make(session)
            before = await cache_counters(base)
            result = await measure(name, op, counter, c, duration, warmup, pids, raw=raw)
            result.cache = cache_note(before, await cache_counters(base))
            results.append(result)

    # One counter per operation, shared by its warm-ups and rows: txn keys and POST names never
    # repeat.
    counters = {
        name: itertools.count()
        for name in (
            *RAW_OPERATIONS,
            API_GET,
            API_LIST,
            API_LIST_MANY,
            API_TAG,
            API_DATA,
            API_SERVICE,
            API_POST,
        )
    }
    async with RawEtcd([etcd_endpoint]) as etcd:
        raw = RawOps(etcd, tag)
        api = ApiOps(base, tag)
        await raw.setup()
        await api.setup()
        print(
            "rows (raw: lastbackend.store.etcd.Etcd in this process; API: aiohttp client with a "
            "keep-alive pool sized to the concurrency):",
            file=sys.stderr,
        )
        for c in RAW_CONCURRENCY:
            await raw_row(RAW_GET, raw.get, counters[RAW_GET], c)
            await api_row(API_GET, api.get, counters[API_GET], c, RAW_GET)
        for c in API_CONCURRENCY:
            await api_row(API_LIST, api.list, counters[API_LIST], c, None)
        await api.add_tags()
        # The raw get again, right before the row compared with it.
        await raw_row(RAW_GET_AGAIN, raw.get, counters[RAW_GET], 16)
        await api_row(API_TAG, api.get_tag, counters[API_TAG], 16, RAW_GET_AGAIN)
        await api_row(API_DATA, api.get_data, counters[API_DATA], 1, None)
        await api.add_services()
        await api_row(API_SERVICE, api.get_service, counters[API_SERVICE], 16, RAW_GET_AGAIN)
        await api.add_many(etcd)
        await api_row(API_LIST_MANY, api.list_many, counters[API_LIST_MANY], 16, None)
        for c in RAW_CONCURRENCY:
            await raw_row(RAW_PUT, raw.put, counters[RAW_PUT], c)
        for c in RAW_CONCURRENCY:
            await raw_row(RAW_TXN, raw.txn, counters[RAW_TXN], c)
            await api_row(API_POST, api.post, counters[API_POST], c, RAW_TXN)
    order = [
        *RAW_OPERATIONS,
        API_GET,
        API_POST,
        API_LIST,
        API_LIST_MANY,
        API_TAG,
        API_DATA,
        API_SERVICE,
    ]
    return sorted(results, key=lambda r: (order.index(r.operation), r.concurrency))


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~1 s per row instead of ~3 s")
    args = parser.parse_args(argv)
    duration, warmup, budget = (1.0, 0.2, 90.0) if args.quick else (3.0, 0.5, 180.0)
    if shutil.which("etcd") is None:
        print("bench_api: the etcd binary is not on PATH (Debian: etcd-server)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)

    with tempfile.TemporaryDirectory(prefix="lb-bench-") as tmp:
        work = Path(tmp)
        server = local_etcd(work / "etcd-data", work / "etcd.log")
        api_log = work / "api.log"
        api: subprocess.Popen[bytes] | None = None
        try:
            server.start(timeout=30)
            listen = f"{HOST}:{free_port()}"
            api = start_api(server.endpoint, listen, api_log)
            base = URL(f"http://{listen}")
            wait_ready(api, str(base), api_log)
            pids: dict[str, int | None] = {
                "client": None,
                "api": api.pid,
                "etcd": server.proc.pid if server.proc else None,
            }
            print(
                f"etcd {server.endpoint} (pid {pids['etcd']}), API {base} (pid {api.pid}, "
                f"LB_LOG_LEVEL=warning: no per-request access log); {duration:g} s per row "
                f"after {warmup:g} s warm-up",
                file=sys.stderr,
            )
            results = asyncio.run(
                asyncio.wait_for(run(server.endpoint, base, duration, warmup, pids), budget)
            )
            if api.poll() is not None:
                raise RuntimeError(f"the API exited during the run:\n{_tail(api_log)}")
        except Exception:
            print(f"--- API log tail ---\n{_tail(api_log)}", file=sys.stderr)
            raise
        finally:
            stop_process(api)
            server.stop()

    cores = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    print(
        f"\n## lastbackend API benchmark{' (--quick)' if args.quick else ''}\n\n"
        f"Python {platform.python_version()}, {cores} cores shared by the load generator, the API "
        f"process and etcd; loopback only; the API runs with LB_LOG_LEVEL=warning, so its "
        f"per-request access log is off. {duration:g} s per row after a {warmup:g} s warm-up; "
        f"GET and list read {PROJECTS} projects ({MANY_PROJECTS} in the marked list row); "
        f"API/raw compares rates at the same "
        f"concurrency. CPU µs/req is CPU time per request of this process (client), the API "
        f"process and etcd; other load is what the rest of the machine used meanwhile, in cores "
        f"(noise: much above 0.1 makes a row unreliable). Load average at the end: "
        f"{load:.2f}.\n"
    )
    print(table(results))
    print("\n### Aims\n")
    print("\n".join(aims(results)))
    others = [r.cpu["other"] for r in results if not math.isnan(r.cpu.get("other", math.nan))]
    if others and max(others) > NOISY:
        print(
            f"\nWARNING: other processes used up to {max(others):.2f} of {cores} cores during "
            "the rows: these numbers (p99 above all) measure a shared machine; run it again "
            "when the machine is idle."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
