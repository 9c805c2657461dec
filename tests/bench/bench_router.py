"""The router on real Caddy and real Docker: its overhead, its route latency, and 1,000 routes.

What it measures, in one run, on loopback only (nothing is pulled: the image is
``lastbackend-test/busybox:1``, reused if present, else imported offline from busybox-static by
``tests/baseimage.py``, as the e2e tests and the containers benchmark do):

Setup: a private etcd (:class:`~lastbackend.store.embedded.EmbeddedEtcd` in a temporary
directory, on free ports) and ``lastbackend daemon --etcd ... --listen 127.0.0.1:<free> --name
bench-<hex> --router-http 127.0.0.1:<free> --router-https 127.0.0.1:<free>`` (API, controllers,
this host's node agent and a router with its own Caddy, in one process at log level ``info``;
its data dir in the temporary directory, or in ``--keep DIR`` to read the logs afterwards).
Every container it makes is labelled ``io.lastbackend.node=bench-<hex>`` and whatever carries
that label is force-removed at the end; the daemon (and with it Caddy) and etcd are stopped,
also when a phase fails or the time budget (290 s) runs out.

1. **Through the router vs straight to the container.** One service, ``web`` in project
   ``bench``: one busybox ``httpd -f -p 8080 -h /www`` container, ``ports {"8080/TCP": 0}``,
   serving the image's 23-byte page. ApacheBench (``ab``, Debian's apache2-utils) asks for ``/``
   with keep-alive (``-k``) either straight at the container's published host port
   (``127.0.0.1:<port>``, through Docker's docker-proxy) or at the router's HTTP port with
   ``-H "Host: web.bench.lb.localhost"`` (client -> Caddy -> the same published port). At
   concurrency 1, 16 and 64, one level at a time, after a warm-up of both: direct, routed,
   direct, routed (two rounds; one with ``--quick``), each run a fixed number of requests.

   The numbers: **req/s** is ab's ``Requests per second``. **p50** and **p99** are of the time
   each request took (connect included), from ab's ``-e`` CSV: the same percentiles as its
   ``Percentage of the requests served`` table, which prints whole milliseconds, but to the
   microsecond. **mean** is ab's ``Time per request ... (mean)`` (concurrency x wall time /
   requests: the mean latency a client saw). A row is the mean of its rounds;
   **routed/direct** is the ratio of the rates and **p99 added** routed minus direct p99.
   Failed and non-2xx answers (ab's counts) are shown, and any fails the aims.
   **SYNs dropped** is ``TcpExt ListenDrops`` of the container's network namespace over the
   row's runs: busybox httpd listens with a backlog of 9 and forks a process per connection, so
   past ~10 connections at once a new one waits for TCP's SYN retransmission (1 s, then 3 s):
   at c=64 such drops, not the path, make p99 on both paths. busybox httpd also closes every
   connection, so ``direct`` is a new TCP connection per request, while through the router the
   client keeps its connection to Caddy and Caddy dials the container for each request.
   ab, Caddy, docker-proxy and httpd share the machine's cores.
2. **Route latency.** N times (10; 4 with ``--quick``) a service with one container is created.
   This process watches the project's keys in etcd itself, so it knows when the node agent's
   report of the running container (with its host port) was committed; meanwhile it polls, in
   turn every 5 ms, the service's containers through the API and the router with the service's
   host on a fresh connection, until the router answers with the container's page (200).
   **report committed -> first answer through the router** is the aim's figure (the issue's
   "container running -> first request through the router"). The node agent reports a new
   container running but not ready, and ready once its health check passes; the routers route
   only ready ones, so **its ready report -> first answer** is the router's own share. **The
   API says running -> first answer** is the same from the first API answer that lists it
   running (below 0 when the router was first). (The container object's ``updated`` stamp is
   whole seconds, too coarse to time anything by.)
   Then the service is deleted and the router polled until it answers 404: **DELETE sent ->
   404**, and from the delete's commit as the watch saw it. The resolution is the poll period
   plus a round trip (~1 ms). Every other answer seen while waiting is listed with the time it
   took (404 before the route exists, 503 while it has no running instance, 200 after the
   DELETE until the route goes, and anything else).
3. **1,000 routed services.** 1,000 services (``r-0000``...) are created through the API
   (``POST``, 16 at a time, ``replicas: 0`` so no container is started), then one container
   object each is written straight into etcd as a node agent writes it (``running``, this node,
   ``ports {"8080/TCP": <the web container's host port>}``: 1,000 routes to one real upstream),
   in 128-op transactions. **last write -> the last host answered** runs from the last of those
   writes until the router answers ``r-0999``'s host with the page: Caddy then runs a config
   holding every route (a config is built from the router's caches, which apply etcd's events
   in revision order, and is loaded whole). Also shown: the loads in the phase and after the
   last write, and their mean duration (``lastbackend_router_config_load_seconds`` on the
   daemon's ``/metrics``: build the table and the JSON, ``POST /load``, Caddy provisions it),
   by result; one load's Python part timed in this process on the same tree (``table.build``;
   ``caddy.config`` and ``json.dumps``) and Caddy's part (its running config fetched from the
   admin socket and loaded again, forced with ``Cache-Control: must-revalidate``, 3 times); the
   routes ``lastbackend_router_routes`` reports and ``lastbackend routes --json`` prints; 50
   random hosts answered through the router; 5 single changes at 1,000 routes (a container
   object deleted -> its host answers 503) with their loads; and Caddy's ``VmRSS`` (and
   ``VmHWM``) from ``/proc/<pid>/status`` (Caddy found as the daemon's child) before the phase,
   with one route, and after it.

It prints progress to stderr, then markdown tables and the issue's aims with PASS/MISS to
stdout, and the CPU other processes used during each phase (a busy machine's figures say so).

Run from the repository root (needs ``etcd``, ``caddy`` and ``ab`` on PATH and a Docker
engine)::

    .venv/bin/python tests/bench/bench_router.py           # ~1.5 minutes
    .venv/bin/python tests/bench/bench_router.py --quick   # ~40 seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import docker
import docker.errors

# Run as a script from tests/bench/: make the repository's tests package importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lastbackend import codec
from lastbackend.model.common import now
from lastbackend.model.platform import Container
from lastbackend.node.agent import LABEL_NODE, LABEL_SERVICE
from lastbackend.router import caddy as caddy_config
from lastbackend.router import table
from lastbackend.store import keys
from lastbackend.store.etcd import MAX_TXN_OPS, Op, list_prefix
from lastbackend.store.routers import routed_key
from tests.baseimage import BASE_IMAGE as IMAGE
from tests.baseimage import INDEX_HTML
from tests.bench.bench_containers import (
    BudgetExceeded,
    Http,
    _die_with_parent,
    _terminate,
    budget,
    docker_api,
    docker_pids,
    ensure_image,
    etcd_count,
    get_json,
    machine_busy,
    noise_report,
    percentile,
    proc_status_kb,
    say,
    spawn,
    stop_process,
    sweep_node,
    tail,
)
from tests.support import RawEtcd, free_port, local_etcd

HOST = "127.0.0.1"
HTTPD = "httpd -f -p 8080 -h /www"
PORT = "8080/TCP"
MEMORY_MB = 32
PROJECT = "bench"
DOMAIN = "lb.localhost"
POLL = 0.005  # seconds between polls while waiting for a route to change
CONCURRENCY = (1, 16, 64)
POST_CONCURRENCY = 16
SCALE_SAMPLE = 50
SCALE_CHANGES = 5
# The aims.
AIM_RATIO = 0.80  # routed/direct throughput at c=16
AIM_ADDED_P99_MS = 3.0  # at c=16
AIM_ROUTE_P99_MS = 500.0
METRIC_LOAD = "lastbackend_router_config_load_seconds"
METRIC_ROUTES = "lastbackend_router_routes"


@dataclass(frozen=True)
class Plan:
    requests: dict[int, int]  # concurrency -> requests per ab run
    warmup: int
    rounds: int
    latency_runs: int
    services: int
    budget: float  # seconds for the whole run, after which it stops (and cleans up)


FULL = Plan(
    requests={1: 2000, 16: 6000, 64: 6000},
    warmup=300,
    rounds=2,
    latency_runs=10,
    services=1000,
    budget=290.0,
)
QUICK = Plan(
    requests={1: 1000, 16: 3000, 64: 3000},
    warmup=200,
    rounds=1,
    latency_runs=4,
    services=1000,
    budget=200.0,
)


# CPU noise --------------------------------------------------------------------------------------


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_with_children(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` (its reaped children included: httpd forks a
    process per connection); NaN if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(v) for v in fields[11:15]) / _TICK
    except (OSError, IndexError, ValueError):
        return math.nan


def own_cpu() -> float:
    """This process and its reaped children (ab, ``lastbackend routes``)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Meter:
    """Cores that processes other than the bench's (this script and its children, the daemon,
    Caddy, etcd, the Docker engine and the bench's containers) used while a phase ran."""

    def __init__(self, pids: Callable[[], Sequence[int]]) -> None:
        self.pids = pids
        self.started = time.monotonic()
        self.busy = machine_busy()
        self.own = own_cpu()
        self.cpu = {p: cpu_with_children(p) for p in self._all()}

    def _all(self) -> list[int]:
        return sorted({*self.pids(), *docker_pids()})

    def cores(self) -> float:
        ours = own_cpu() - self.own
        for pid in {*self.cpu, *self._all()}:
            spent = cpu_with_children(pid) - self.cpu.get(pid, 0.0)
            if not math.isnan(spent):
                ours += max(0.0, spent)
        elapsed = max(1e-9, time.monotonic() - self.started)
        return max(0.0, machine_busy() - self.busy - ours) / elapsed


# processes and probes ---------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def caddy_pid(daemon: int) -> int | None:
    """The daemon's Caddy (``setpriv`` execs it, so it is a direct child)."""
    for pid in children(daemon):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "caddy":
                return pid
    return None


def through(port: int, host: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET / at the router with ``Host: host`` on a fresh connection: what a new client sees.
    No answer at all is status 0, with the error as the body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (http.client.HTTPException, OSError) as exc:
        return 0, f"no answer: {type(exc).__name__} {exc}".encode()
    finally:
        conn.close()


Tally = dict[str, list[float]]
"""Answers that were not yet the one waited for: ``"<phase>: <status> <body's first line>"`` ->
how long each took (seconds)."""


def tally(seen: Tally | None, phase: str, status: int, body: bytes, took: float) -> None:
    if seen is not None:
        line = body.split(b"\n", 1)[0][:70].decode(errors="replace")
        seen.setdefault(f"{phase}: {status} {line}".rstrip(), []).append(took)


def metrics(api: Http) -> dict[str, float]:
    """The router's samples on ``/metrics`` (buckets as ``name:le``, loads as ``name:result``)."""
    status, raw = api.request("GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    out: dict[str, float] = {}
    for line in raw.decode().splitlines():
        if not line.startswith("lastbackend_router_"):
            continue
        head, _, value = line.rpartition(" ")
        name = head.split("{", 1)[0]
        label = re.search(r'(?:le|result)="([^"]+)"', head)
        out[f"{name}:{label.group(1)}" if label else name] = float(value)
    return out


def host_of(service: str) -> str:
    return f"{service}.{PROJECT}.{DOMAIN}"


class Reports:
    """This process's own watch on a project's services: when each service's first running
    container with a host port, the first that is also ready (its health check passed), and
    each service's deletion, arrived here (perf_counter).

    A node agent's report is committed to etcd before the router (or anyone) can see it, so this
    is the moment the report exists, to within the watch's delivery (~1 ms on loopback); the
    API's answers come later (a GET that waits behind the daemon's other work)."""

    def __init__(self, endpoint: str, prefix: str) -> None:
        self.endpoint = endpoint
        self.prefix = prefix
        self.running: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._main, name="reports", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> Reports:
        self._thread.start()
        if not self._ready.wait(15):
            raise TimeoutError(f"the watch on {self.prefix} did not start: {self.error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)

    def _main(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        try:
            async with RawEtcd([self.endpoint]) as etcd:
                revision = await etcd.status()
                self._ready.set()
                async for events in etcd.watch(self.prefix, start_revision=revision + 1):
                    arrived = time.perf_counter()
                    for event in events:
                        self._note(event.kind, event.kv.key, event.kv.value, arrived)
        except Exception as exc:
            self.error = exc
            self._ready.set()

    def _note(self, kind: str, key: str, value: bytes, arrived: float) -> None:
        ref = keys.service_of(key)
        if ref is None:
            return
        if kind == "delete" and keys.leaf(key) == "meta":
            self.deleted.setdefault(ref.service, arrived)
        elif kind == "put" and keys.container_of(key) is not None:
            with contextlib.suppress(ValueError, AttributeError):
                body = json.loads(value)
                if body.get("status") == "running" and (body.get("ports") or {}).get(PORT):
                    self.running.setdefault(ref.service, arrived)
                    if body.get("ready") is not False:  # None: an agent without health checks
                        self.ready.setdefault(ref.service, arrived)


# ab ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AbRun:
    complete: int
    failed: int
    non_2xx: int
    keep_alive: int
    rate: float  # requests per second
    mean_ms: float  # ab's "Time per request (mean)"
    p50_ms: float  # from the -e CSV, to the microsecond
    p99_ms: float
    table_p50_ms: float  # ab's printed table, whole milliseconds
    table_p99_ms: float
    drops: int = 0  # SYNs httpd's full accept queue dropped meanwhile (each waits >= 1 s)
    caddy_cpu_us: float = math.nan  # Caddy's CPU time per request (routed runs)


def _number(pattern: str, text: str, default: float | None = None) -> float:
    found = re.search(pattern, text, re.MULTILINE)
    if found is None:
        if default is None:
            raise RuntimeError(f"ab printed no {pattern!r}:\n{text[-2000:]}")
        return default
    return float(found.group(1))


def ab(url: str, requests: int, concurrency: int, csv: Path, host: str | None = None) -> AbRun:
    cmd = ["ab", "-k", "-q", "-r", "-s", "10", "-n", str(requests), "-c", str(concurrency)]
    cmd += ["-e", str(csv)]
    if host is not None:
        cmd += ["-H", f"Host: {host}"]
    done = subprocess.run(
        [*cmd, url],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
        check=False,
    )
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"ab exited with {done.returncode}:\n{text[-2000:]}")
    cdf = {}
    for line in csv.read_text().splitlines()[1:]:
        pct, _, ms = line.partition(",")
        cdf[int(pct)] = float(ms)
    return AbRun(
        complete=int(_number(r"^Complete requests:\s+(\d+)", text)),
        failed=int(_number(r"^Failed requests:\s+(\d+)", text)),
        non_2xx=int(_number(r"^Non-2xx responses:\s+(\d+)", text, 0)),
        keep_alive=int(_number(r"^Keep-Alive requests:\s+(\d+)", text, 0)),
        rate=_number(r"^Requests per second:\s+([\d.]+)", text),
        mean_ms=_number(r"^Time per request:\s+([\d.]+) \[ms\] \(mean\)$", text),
        p50_ms=cdf[50],
        p99_ms=cdf[99],
        table_p50_ms=_number(r"^\s+50%\s+(\d+)", text),
        table_p99_ms=_number(r"^\s+99%\s+(\d+)", text),
    )


def mean_run(runs: Sequence[AbRun]) -> AbRun:
    def avg(get: Callable[[AbRun], float]) -> float:
        return sum(get(r) for r in runs) / len(runs)

    return AbRun(
        complete=sum(r.complete for r in runs),
        failed=sum(r.failed for r in runs),
        non_2xx=sum(r.non_2xx for r in runs),
        keep_alive=sum(r.keep_alive for r in runs),
        rate=avg(lambda r: r.rate),
        mean_ms=avg(lambda r: r.mean_ms),
        p50_ms=avg(lambda r: r.p50_ms),
        p99_ms=avg(lambda r: r.p99_ms),
        table_p50_ms=avg(lambda r: r.table_p50_ms),
        table_p99_ms=avg(lambda r: r.table_p99_ms),
        drops=-1 if any(r.drops < 0 for r in runs) else sum(r.drops for r in runs),
        caddy_cpu_us=avg(lambda r: r.caddy_cpu_us),
    )


def listen_drops(pid: int) -> int:
    """``TcpExt ListenDrops`` in the network namespace of ``pid`` (the container's): SYNs dropped
    because a listener's accept queue was full. busybox httpd listens with a backlog of 9, so at
    high concurrency connections wait for TCP's 1 s SYN retransmission; -1 if unreadable."""
    try:
        lines = Path(f"/proc/{pid}/net/netstat").read_text().splitlines()
    except OSError:
        return -1
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenDrops", -1))
    return -1


# results ----------------------------------------------------------------------------------------


@dataclass
class Scale:
    services: int = 0
    create_seconds: float = math.nan  # the API POSTs
    write_seconds: float = math.nan  # the container objects
    served: float = math.nan  # s, last write -> the last host answered through the router
    loads_total: int = 0  # loads during the phase
    load_mean: float = math.nan  # s, their mean
    loads_after_write: int = 0
    load_after_write_mean: float = math.nan
    routes_metric: float = math.nan
    routes_cli: int = 0
    routes_cli_upstreams: int = 0
    routes_cli_seconds: float = math.nan
    sample_ok: int = 0
    change: list[float] = field(default_factory=list)  # s, one change -> served
    change_load: list[float] = field(default_factory=list)  # s, that load's own duration
    change_timeouts: int = 0  # changes not served within 30 s
    loads_by_result: dict[str, int] = field(default_factory=dict)
    build_seconds: float = math.nan  # table.build, in this process
    render_seconds: float = math.nan  # caddy.config + json.dumps, in this process
    config_bytes: int = 0
    caddy_reload: list[float] = field(default_factory=list)  # s, Caddy's forced /load
    rss_before_mb: float = math.nan
    rss_after_mb: float = math.nan
    hwm_after_mb: float = math.nan
    daemon_rss_mb: float = math.nan


@dataclass
class Results:
    node: str = ""
    image: str = ""
    web_port: int = 0
    direct: dict[int, AbRun] = field(default_factory=dict)
    routed: dict[int, AbRun] = field(default_factory=dict)
    routed_keep_alive: dict[int, int] = field(default_factory=dict)
    report_routed: list[float] = field(default_factory=list)  # s, the watch saw it -> served
    ready_routed: list[float] = field(default_factory=list)  # s, the watch saw it ready -> served
    api_routed: list[float] = field(default_factory=list)  # s, the API said running -> served
    delete_404: list[float] = field(default_factory=list)  # s, DELETE sent -> 404
    deleted_404: list[float] = field(default_factory=list)  # s, the watch saw it -> 404
    latency_answers: Tally = field(default_factory=dict)
    scale_answers: Tally = field(default_factory=dict)
    scale: Scale = field(default_factory=Scale)
    other_load: dict[str, float] = field(default_factory=dict)


# the daemon -------------------------------------------------------------------------------------


class Cluster:
    """The daemon under test: its API, its router's port, its Caddy, and Docker."""

    def __init__(
        self,
        etcd: str,
        daemon: subprocess.Popen[bytes],
        listen: str,
        router_http: int,
        node: str,
        log: Path,
        client: docker.APIClient,
        work: Path,
    ) -> None:
        self.etcd = etcd
        self.daemon = daemon
        self.listen = listen
        self.router_http = router_http
        self.node = node
        self.log = log
        self.docker = client
        self.api = Http(listen)
        self.probe = Http(listen)
        self.pid = ""
        self.router_paths = caddy_config.Paths(work / "daemon-data" / "router")

    def services(self) -> str:
        return f"/api/projects/{PROJECT}/services"

    def caddy(self) -> int:
        pid = caddy_pid(self.daemon.pid)
        if pid is None:
            raise RuntimeError(f"no caddy runs under the daemon (pid {self.daemon.pid})")
        return pid

    def pids(self) -> list[int]:
        """The bench's long-lived processes: the daemon, its Caddy, and the containers' init."""
        found = [self.daemon.pid, *children(self.daemon.pid)]
        with contextlib.suppress(docker.errors.DockerException, OSError):
            for c in self.docker.containers(filters={"label": [f"{LABEL_NODE}={self.node}"]}):
                pid = self.docker.inspect_container(c["Id"])["State"]["Pid"]
                if pid:
                    found.append(int(pid))
        return found

    def create(self, name: str, replicas: int) -> str:
        payload = {
            "name": name,
            "config": {
                "image": IMAGE,
                "replicas": replicas,
                "memory": MEMORY_MB,
                "command": HTTPD,
                "ports": {PORT: 0},
            },
        }
        return str(self.api.json("POST", self.services(), payload, expect=201)["id"])

    def running(self, name: str, timeout: float) -> tuple[float, dict[str, Any]]:
        """Poll the API until a container of ``name`` is running with a host port: when the
        answer saying so arrived (perf_counter), and the container."""
        deadline = time.perf_counter() + timeout
        while True:
            body = self.probe.json("GET", f"{self.services()}/{name}/containers?per_page=100")
            seen = time.perf_counter()
            for c in body["resources"]:
                if c["status"] == "running" and (c.get("ports") or {}).get(PORT):
                    return seen, c
            if seen > deadline:
                raise TimeoutError(f"{name}: no running container after {timeout:g} s: {body}")
            time.sleep(POLL)

    def says_running(self, name: str) -> bool:
        """One GET of the service's containers: is one running with a host port?"""
        body = self.probe.json("GET", f"{self.services()}/{name}/containers?per_page=100")
        return any(
            c["status"] == "running" and (c.get("ports") or {}).get(PORT) for c in body["resources"]
        )

    def until_through(
        self,
        host: str,
        want: Callable[[int, bytes], bool],
        timeout: float,
        seen: Tally | None = None,
        phase: str = "",
    ) -> float:
        """Poll the router until an answer for ``host`` satisfies ``want``: its arrival time."""
        deadline = time.perf_counter() + timeout
        while True:
            asked = time.perf_counter()
            status, body = through(self.router_http, host)
            answered = time.perf_counter()
            if want(status, body):
                return answered
            tally(seen, phase, status, body, answered - asked)
            if answered > deadline:
                raise TimeoutError(
                    f"the router did not answer {host} as wanted in {timeout:g} s: last "
                    f"{status} {body[:200]!r}\n{tail(self.log)}"
                )
            time.sleep(POLL)

    def wait_no_containers(self, name: str, sid: str, timeout: float = 30.0) -> None:
        """Until Docker has no container of the service (the next run starts clean)."""
        selector = {"label": [f"{LABEL_SERVICE}={sid}"]}
        deadline = time.monotonic() + timeout
        while self.docker.containers(all=True, filters=selector):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: containers left {timeout:g} s after its delete")
            time.sleep(0.05)


def served(status: int, body: bytes) -> bool:
    return status == 200 and body == INDEX_HTML


def start_daemon(
    work: Path, etcd: str, node: str
) -> tuple[subprocess.Popen[bytes], str, int, Path]:
    listen = f"{HOST}:{free_port()}"
    router_http = free_port()
    log = work / "daemon.log"
    args = ["daemon", "--etcd", etcd, "--listen", listen, "--name", node]
    args += ["--router-http", f"{HOST}:{router_http}", "--router-https", f"{HOST}:{free_port()}"]
    args += ["--domain", DOMAIN, "--data-dir", str(work / "daemon-data"), "--log-level", "info"]
    proc = spawn(args, log)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode}:\n{tail(log)}")
        status, body = get_json(f"http://{listen}/readyz")
        router = (body or {}).get("router") or {}
        if status == 200 and router.get("ready") and etcd_count(etcd, keys.node(node)) == 1:
            return proc, listen, router_http, log
        if time.monotonic() > deadline:
            raise TimeoutError(f"the daemon is not ready after 60 s: {body}\n{tail(log)}")
        time.sleep(0.05)


# phase 1: throughput ----------------------------------------------------------------------------


def phase_throughput(cluster: Cluster, plan: Plan, results: Results, work: Path) -> None:
    say("1. requests straight to the container vs through the router (ab -k)")
    cluster.create("web", 1)
    _, container = cluster.running("web", timeout=60)
    port = results.web_port = int(container["ports"][PORT])
    httpd = int(cluster.docker.inspect_container(container["id"])["State"]["Pid"])
    caddy = cluster.caddy()
    host = host_of("web")
    direct_url = f"http://{HOST}:{port}/"
    routed_url = f"http://{HOST}:{cluster.router_http}/"
    deadline = time.monotonic() + 30
    while not (served(*through(port, host)) and served(*through(cluster.router_http, host))):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"web is not served directly and through the router\n{tail(cluster.log)}"
            )
        time.sleep(0.05)
    csv = work / "ab.csv"
    for concurrency in CONCURRENCY:
        n = plan.requests[concurrency]
        ab(direct_url, plan.warmup, concurrency, csv)
        ab(routed_url, plan.warmup, concurrency, csv, host)
        direct: list[AbRun] = []
        routed: list[AbRun] = []
        for _ in range(plan.rounds):
            for runs, url, via in ((direct, direct_url, None), (routed, routed_url, host)):
                before, cpu = listen_drops(httpd), cpu_with_children(caddy)
                one = ab(url, n, concurrency, csv, via)
                spent = (cpu_with_children(caddy) - cpu) / one.complete * 1e6
                after = listen_drops(httpd)
                drops = after - before if min(after, before) >= 0 else -1
                runs.append(replace(one, drops=drops, caddy_cpu_us=spent))
        d, r = results.direct[concurrency], results.routed[concurrency] = (
            mean_run(direct),
            mean_run(routed),
        )
        say(
            f"  c={concurrency:<2} direct {d.rate:7.0f} req/s p50 {d.p50_ms:6.2f} p99 "
            f"{d.p99_ms:7.2f} ms | routed {r.rate:7.0f} req/s p50 {r.p50_ms:6.2f} p99 "
            f"{r.p99_ms:7.2f} ms | ratio {r.rate / d.rate:.2f}; failed {d.failed}/{r.failed}, "
            f"non-2xx {d.non_2xx}/{r.non_2xx}, keep-alive {d.keep_alive}/{r.keep_alive}, "
            f"SYNs dropped by httpd {d.drops}/{r.drops}, Caddy CPU {r.caddy_cpu_us:.0f} us/request"
        )


# phase 2: route latency -------------------------------------------------------------------------


def phase_latency(cluster: Cluster, plan: Plan, results: Results) -> None:
    say(f"2. route latency: running -> routed, delete -> 404 ({plan.latency_runs} runs)")
    reports = Reports(cluster.etcd, keys.services(cluster.pid)).start()
    try:
        sids = [
            latency_run(cluster, reports, f"lat-{i}", results) for i in range(plan.latency_runs)
        ]
    finally:
        reports.stop()
    # The node agent drains and stops deleted containers on its own time: let it finish before
    # phase 3, within reason (leftovers are swept at the end anyway).
    started = time.monotonic()
    for sid in sids:
        with contextlib.suppress(TimeoutError):
            cluster.wait_no_containers(
                sid, sid, timeout=max(0.0, 30 - (time.monotonic() - started))
            )
    left = sum(
        len(cluster.docker.containers(all=True, filters={"label": [f"{LABEL_SERVICE}={sid}"]}))
        for sid in sids
    )
    waited = time.monotonic() - started
    if left:
        say(f"  {left} containers of the deleted services still there after {waited:.0f} s")
    else:
        say(f"  the deleted services' containers were gone {waited:.1f} s after the last delete")


def latency_run(cluster: Cluster, reports: Reports, name: str, results: Results) -> str:
    """One create -> routed -> delete -> 404; the service's id."""
    host = host_of(name)
    seen = results.latency_answers
    sid = cluster.create(name, 1)
    api_running = routed = math.nan
    deadline = time.perf_counter() + 60
    # The API and the router polled in turn, so neither waits on the other's answers.
    while math.isnan(routed) or math.isnan(api_running):
        if math.isnan(api_running) and cluster.says_running(name):
            api_running = time.perf_counter()
        if math.isnan(routed):
            asked = time.perf_counter()
            status, body = through(cluster.router_http, host)
            if served(status, body):
                routed = time.perf_counter()
            else:
                tally(seen, "before routed", status, body, time.perf_counter() - asked)
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{name} is not served after 60 s\n{tail(cluster.log)}")
        time.sleep(POLL)
    waited = time.monotonic() + 5
    while sid not in reports.running and time.monotonic() < waited:
        time.sleep(POLL)  # the watch runs in a thread of this process: it may be behind
    if sid not in reports.running:
        raise RuntimeError(f"{name}: this process's watch saw no running report ({reports.error})")
    reported = reports.running[sid]
    results.report_routed.append(routed - reported)
    results.ready_routed.append(routed - reports.ready.get(sid, math.nan))
    results.api_routed.append(routed - api_running)
    sent = time.perf_counter()
    cluster.api.json("DELETE", f"{cluster.services()}/{name}", expect=204)
    gone = cluster.until_through(host, lambda status, _: status == 404, 10, seen, "after DELETE")
    results.delete_404.append(gone - sent)
    results.deleted_404.append(gone - reports.deleted.get(sid, math.nan))
    say(
        f"  {name}: reported running -> routed {(routed - reported) * 1000:6.1f} ms (ready "
        f"{(reports.ready.get(sid, math.nan) - reported) * 1000:5.1f} ms and the API said "
        f"running {(api_running - reported) * 1000:5.1f} ms after the report), "
        f"DELETE -> 404 {(gone - sent) * 1000:6.1f} ms"
    )
    return sid


# phase 3: 1,000 routed services -----------------------------------------------------------------


async def create_many(listen: str, names: Sequence[str]) -> dict[str, str]:
    """POST every service (replicas 0), ``POST_CONCURRENCY`` at a time: name -> id."""
    ids: dict[str, str] = {}
    sem = asyncio.Semaphore(POST_CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=POST_CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(name: str) -> None:
            payload = {
                "name": name,
                "config": {"image": IMAGE, "replicas": 0, "memory": MEMORY_MB, "ports": {PORT: 0}},
            }
            async with (
                sem,
                session.post(f"http://{listen}/api/projects/{PROJECT}/services", json=payload) as r,
            ):
                body = await r.json()
                if r.status != 201:
                    raise RuntimeError(f"POST {name}: {r.status} {body}")
                ids[name] = str(body["id"])

        await asyncio.gather(*(one(n) for n in names))
    return ids


async def write_containers(
    endpoint: str, pid: str, ids: Sequence[str], node: str, port: int
) -> float:
    """One running container object per service, as a node agent writes them; the
    perf_counter time the last transaction was acknowledged."""
    stamp = now()
    ops = [
        Op.put(
            keys.container(pid, sid, f"bench{n:04d}"),
            codec.dumps(
                Container(f"bench{n:04d}", "running", stamp, stamp, {PORT: port}, "", node)
            ),
        )
        for n, sid in enumerate(ids)
    ]
    last = math.nan
    async with RawEtcd([endpoint]) as etcd:
        for start in range(0, len(ops), MAX_TXN_OPS):
            await etcd.txn([], ops[start : start + MAX_TXN_OPS])
            last = time.perf_counter()
    return last


async def delete_key(endpoint: str, key: str) -> float:
    async with RawEtcd([endpoint]) as etcd:
        await etcd.txn([], [Op.delete(key)])
        return time.perf_counter()


async def build_here(endpoint: str, paths: caddy_config.Paths) -> tuple[float, float, int]:
    """The router's own work for one load, timed in this process on the tree as it is now:
    ``table.build`` over the keys it caches, and ``caddy.config`` + JSON (best of 3 each);
    and the JSON's size."""
    async with RawEtcd([endpoint]) as etcd:
        _, found = await list_prefix(etcd, keys.PROJECTS, keep=lambda k: routed_key(k) is not None)
        _, node_kvs = await list_prefix(etcd, keys.NODES)
    projects = {kv.key: kv.value for kv in found}
    nodes = {kv.key: kv.value for kv in node_kvs}
    build = render = math.inf
    size = 0
    for _ in range(3):
        started = time.perf_counter()
        routes = table.build(projects, nodes, DOMAIN)
        built = time.perf_counter()
        document = caddy_config.config(routes, http="127.0.0.1:1", https="127.0.0.1:2", paths=paths)
        size = len(json.dumps(document).encode())
        build, render = min(build, built - started), min(render, time.perf_counter() - built)
    return build, render, size


async def caddy_reloads(socket: Path, times: int) -> list[float]:
    """Caddy's own part of a load: its running config fetched from the admin API and loaded
    again, forced (``Cache-Control: must-revalidate``, or Caddy skips an unchanged config)."""
    connector = aiohttp.UnixConnector(path=str(socket))
    base = f"http://{caddy_config.ADMIN_HOST}"
    headers = {"Host": caddy_config.ADMIN_HOST}
    timings: list[float] = []
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        async with session.get(f"{base}/config/", headers=headers) as resp:
            raw = await resp.read()
        for _ in range(times):
            started = time.perf_counter()
            async with session.post(
                f"{base}/load",
                data=raw,
                headers={
                    **headers,
                    "Content-Type": "application/json",
                    "Cache-Control": "must-revalidate",
                },
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"caddy /load: {resp.status} {body[:300]!r}")
            timings.append(time.perf_counter() - started)
    return timings


def routes_cli(etcd: str) -> tuple[list[dict[str, Any]], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    started = time.perf_counter()
    script = Path(sys.executable).parent / "lastbackend"
    cmd = [str(script) if script.exists() else "lastbackend", "routes", "--json"]
    cmd += ["--etcd", etcd, "--domain", DOMAIN, "--log-level", "warning"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise RuntimeError(f"lastbackend routes: {done.returncode} {done.stderr[-1000:]}")
    return json.loads(done.stdout), time.perf_counter() - started


def phase_scale(cluster: Cluster, plan: Plan, results: Results) -> None:
    s = results.scale
    s.services = plan.services
    say(f"3. {plan.services} routed services, one container object each")
    caddy = cluster.caddy()
    s.rss_before_mb = proc_status_kb(caddy, "VmRSS") / 1024
    before = metrics(cluster.api)
    names = [f"r-{n:04d}" for n in range(plan.services)]
    started = time.perf_counter()
    ids = asyncio.run(create_many(cluster.listen, names))
    s.create_seconds = time.perf_counter() - started
    say(f"  {len(ids)} services created through the API in {s.create_seconds:.1f} s")
    pid = cluster.pid
    started = time.perf_counter()
    last_write = asyncio.run(
        write_containers(cluster.etcd, pid, [ids[n] for n in names], cluster.node, results.web_port)
    )
    s.write_seconds = last_write - started
    at_write = metrics(cluster.api)
    host = host_of(names[-1])
    done = cluster.until_through(host, served, 90, results.scale_answers, "last host")
    s.served = done - last_write
    time.sleep(0.3)  # a load that started just before the answer finishes
    after = metrics(cluster.api)
    count, total = f"{METRIC_LOAD}_count", f"{METRIC_LOAD}_sum"
    s.loads_total = int(after[count] - before[count])
    s.load_mean = (after[total] - before[total]) / max(1, s.loads_total)
    s.loads_after_write = int(after[count] - at_write[count])
    if s.loads_after_write:
        s.load_after_write_mean = (after[total] - at_write[total]) / s.loads_after_write
    s.routes_metric = after[METRIC_ROUTES]
    say(
        f"  {plan.services} container objects written in {s.write_seconds:.2f} s; the last "
        f"host served {s.served * 1000:.0f} ms after the last write ({s.loads_after_write} "
        f"loads since, {s.load_after_write_mean * 1000:.0f} ms each); {s.loads_total} loads in "
        f"the phase, {s.load_mean * 1000:.0f} ms mean; {s.routes_metric:.0f} routes"
    )
    table, s.routes_cli_seconds = routes_cli(cluster.etcd)
    s.routes_cli = len(table)
    s.routes_cli_upstreams = sum(1 for r in table if r["upstreams"])
    for name in random.Random(11).sample(names, min(SCALE_SAMPLE, len(names))):
        s.sample_ok += served(*through(cluster.router_http, host_of(name)))
    say(
        f"  lastbackend routes --json: {s.routes_cli} hosts ({s.routes_cli_upstreams} with "
        f"upstreams) in {s.routes_cli_seconds:.2f} s; {s.sample_ok}/{SCALE_SAMPLE} sampled hosts "
        "served"
    )
    for k in range(SCALE_CHANGES):
        name = names[k * (len(names) // SCALE_CHANGES)]
        before_change = metrics(cluster.api)
        key = keys.container(pid, ids[name], f"bench{names.index(name):04d}")
        written = asyncio.run(delete_key(cluster.etcd, key))
        try:
            gone = cluster.until_through(
                host_of(name), lambda status, _: status == 503, 30, results.scale_answers, "change"
            )
        except TimeoutError:
            s.change_timeouts += 1
            say(f"  change {k + 1}: {name}'s container deleted, still served after 30 s")
            continue
        s.change.append(gone - written)
        time.sleep(0.2)
        after_change = metrics(cluster.api)
        loads = after_change[count] - before_change[count]
        if loads:
            s.change_load.append((after_change[total] - before_change[total]) / loads)
        say(
            f"  change {k + 1}: {name}'s container deleted -> 503 in {s.change[-1] * 1000:.0f} "
            f"ms ({loads:.0f} load, {s.change_load[-1] * 1000 if loads else math.nan:.0f} ms)"
        )
    for result in ("loaded", "refused", "failed"):
        name = f"lastbackend_router_config_loads_total:{result}"
        s.loads_by_result[result] = int(metrics(cluster.api).get(name, 0) - before.get(name, 0))
    s.build_seconds, s.render_seconds, s.config_bytes = asyncio.run(
        build_here(cluster.etcd, cluster.router_paths)
    )
    s.caddy_reload = asyncio.run(caddy_reloads(cluster.router_paths.admin_socket, 3))
    say(
        f"  one load's parts: table.build {s.build_seconds * 1000:.0f} ms, caddy.config + JSON "
        f"{s.render_seconds * 1000:.0f} ms ({s.config_bytes / 1e6:.1f} MB) in this process; "
        f"Caddy's forced reload of it {min(s.caddy_reload) * 1000:.0f}-"
        f"{max(s.caddy_reload) * 1000:.0f} ms; loads by result {s.loads_by_result}"
    )
    s.rss_after_mb = proc_status_kb(caddy, "VmRSS") / 1024
    s.hwm_after_mb = proc_status_kb(caddy, "VmHWM") / 1024
    s.daemon_rss_mb = proc_status_kb(cluster.daemon.pid, "VmRSS") / 1024
    say(
        f"  caddy (pid {caddy}) RSS {s.rss_before_mb:.0f} MB before, {s.rss_after_mb:.0f} MB "
        f"after (peak {s.hwm_after_mb:.0f} MB); daemon RSS {s.daemon_rss_mb:.0f} MB"
    )


# report -----------------------------------------------------------------------------------------


def verdict(ok: bool, measured: bool = True) -> str:
    if not measured:
        return "MISS (not measured)"
    return "PASS" if ok else "MISS"


def _f(value: float, fmt: str = "{:.2f}") -> str:
    return "n/a" if math.isnan(value) else fmt.format(value)


def _drops(run: AbRun) -> str:
    return "n/a" if run.drops < 0 else str(run.drops)


def _dist(label: str, values: Sequence[float], aim: str = "", result: str = "") -> str:
    ms = [v * 1000 for v in values if not math.isnan(v)]
    return (
        f"| {label} | {len(ms)} | {_f(percentile(ms, 0.5), '{:.0f}')} | "
        f"{_f(percentile(ms, 0.99), '{:.0f}')} | {_f(percentile(ms, 1.0), '{:.0f}')} | {aim} | "
        f"{result} |"
    )


def report(results: Results, plan: Plan, quick: bool) -> str:
    r = results
    s = r.scale
    through_rows = [
        "| c | path | requests | req/s | p50 ms | p99 ms | mean ms | routed/direct | "
        "p99 added ms | failed, non-2xx | SYNs dropped | Caddy CPU µs/req |",
        "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for c in CONCURRENCY:
        d, t = r.direct.get(c), r.routed.get(c)
        if d is None or t is None:
            continue
        through_rows.append(
            f"| {c} | direct | {d.complete} | {d.rate:.0f} | {d.p50_ms:.2f} | {d.p99_ms:.2f} | "
            f"{d.mean_ms:.2f} | | | {d.failed}, {d.non_2xx} | {_drops(d)} | |"
        )
        through_rows.append(
            f"| {c} | router | {t.complete} | {t.rate:.0f} | {t.p50_ms:.2f} | {t.p99_ms:.2f} | "
            f"{t.mean_ms:.2f} | {t.rate / d.rate:.2f} | {t.p99_ms - d.p99_ms:+.2f} | "
            f"{t.failed}, {t.non_2xx} | {_drops(t)} | {_f(t.caddy_cpu_us, '{:.0f}')} |"
        )
    d16, t16 = r.direct.get(16), r.routed.get(16)
    ratio = t16.rate / d16.rate if d16 and t16 else math.nan
    added = t16.p99_ms - d16.p99_ms if d16 and t16 else math.nan
    clean = all(x.failed == 0 and x.non_2xx == 0 for x in [*r.direct.values(), *r.routed.values()])
    route_p99 = percentile(r.report_routed, 0.99) * 1000
    delete_p99 = percentile(r.delete_404, 0.99) * 1000
    route_ok = len(r.report_routed) == plan.latency_runs
    delete_ok = len(r.delete_404) == plan.latency_runs
    n_routes = plan.services + 1  # and the web service
    latency_rows = [
        "| measurement | n | p50 ms | p99 ms | max ms | aim | result |",
        "|---|--:|--:|--:|--:|---|---|",
        _dist(
            "running report committed (our watch) -> first answer through the router",
            r.report_routed,
            f"p99 < {AIM_ROUTE_P99_MS:g} ms",
            verdict(route_p99 < AIM_ROUTE_P99_MS, route_ok),
        ),
        _dist("   its ready report (health check passed) -> first answer", r.ready_routed),
        _dist("   the API says running -> first answer (< 0: the router first)", r.api_routed),
        _dist(
            "DELETE sent -> the router answers 404",
            r.delete_404,
            f"p99 < {AIM_ROUTE_P99_MS:g} ms",
            verdict(delete_p99 < AIM_ROUTE_P99_MS, delete_ok),
        ),
        _dist("   the delete committed (our watch) -> 404", r.deleted_404),
        _dist(
            f"one change at {n_routes} routes (a container object deleted) -> its host 503"
            + (f" ({s.change_timeouts} more not within 30 s)" if s.change_timeouts else ""),
            s.change,
        ),
        _dist("   that change's config load (`config_load_seconds`)", s.change_load),
        _dist("   Caddy's own reload of the same config (forced `POST /load`)", s.caddy_reload),
    ]
    scale_rows = [
        "| measurement | value |",
        "|---|--:|",
        f"| services created through the API (POST, {POST_CONCURRENCY} at a time) | "
        f"{s.services} in {_f(s.create_seconds, '{:.1f}')} s |",
        f"| container objects written (128-op txns) | {s.services} in "
        f"{_f(s.write_seconds, '{:.2f}')} s |",
        f"| last write -> the last host answered through the router | "
        f"{_f(s.served * 1000, '{:.0f}')} ms |",
        f"| config loads after the last write, mean duration | {s.loads_after_write}, "
        f"{_f(s.load_after_write_mean * 1000, '{:.0f}')} ms |",
        f"| config loads during the phase, mean duration | {s.loads_total}, "
        f"{_f(s.load_mean * 1000, '{:.0f}')} ms |",
        f"| loads by result (loaded, refused, failed) | {s.loads_by_result.get('loaded', 0)}, "
        f"{s.loads_by_result.get('refused', 0)}, {s.loads_by_result.get('failed', 0)} |",
        f"| one load's Python part, here: `table.build` / `caddy.config` + JSON (size) | "
        f"{_f(s.build_seconds * 1000, '{:.0f}')} / {_f(s.render_seconds * 1000, '{:.0f}')} ms "
        f"({s.config_bytes / 1e6:.1f} MB) |",
        f"| routes loaded (`{METRIC_ROUTES}`) | {_f(s.routes_metric, '{:.0f}')} |",
        f"| `lastbackend routes --json`: hosts (with upstreams), time | {s.routes_cli} "
        f"({s.routes_cli_upstreams}), {_f(s.routes_cli_seconds, '{:.2f}')} s |",
        f"| random hosts answered through the router | {s.sample_ok}/{SCALE_SAMPLE} |",
        f"| Caddy VmRSS with 1 route / with {n_routes} routes (VmHWM) | "
        f"{_f(s.rss_before_mb, '{:.0f}')} / {_f(s.rss_after_mb, '{:.0f}')} MB "
        f"({_f(s.hwm_after_mb, '{:.0f}')} MB) |",
        f"| daemon VmRSS at the end (API, controllers, node agent, router) | "
        f"{_f(s.daemon_rss_mb, '{:.0f}')} MB |",
    ]
    others = "\n".join(
        f"- {what}: {len(took)} x, slowest {max(took) * 1000:.0f} ms"
        for what, took in sorted({**r.latency_answers, **r.scale_answers}.items())
    )
    load = os.getloadavg()[0]
    header = (
        f"\n## lastbackend router benchmark{' (--quick)' if quick else ''}\n\n"
        f"Python {platform.python_version()}, Caddy {caddy_version()}, "
        f"{os.cpu_count()} cores shared by ab, "
        "Caddy, Docker (docker-proxy publishes the port), busybox httpd, etcd, the daemon and "
        f"this script; loopback only; node `{r.node}`, image `{IMAGE}` ({r.image}). ab -k, "
        f"{plan.rounds} round(s) per row (their mean), requests per run: "
        + ", ".join(f"c={c}: {n}" for c, n in plan.requests.items())
        + "; p50/p99 from ab's `-e` CSV (microseconds), mean = ab's time per request. Direct: "
        "busybox httpd closes every connection, so each request is a new TCP connection; "
        "routed: the client keeps its connection to Caddy (keep-alive requests: "
        + ", ".join(f"c={c}: {t.keep_alive}" for c, t in r.routed.items())
        + "), Caddy dials the container per request. SYNs dropped: connections httpd's accept "
        "queue (backlog 9) refused, each then waiting >= 1 s for TCP to retry: what makes p99 at "
        "c=64 on both paths. Nearest-rank percentiles for phases 2-3 (n < 100: p99 is the max). "
        f"Load average at the end: {load:.2f}.\n"
    )
    aims = [
        f"- {verdict(ratio >= AIM_RATIO and clean, not math.isnan(ratio))} throughput through "
        f"the router >= {AIM_RATIO:.0%} of direct at c=16: {_f(ratio * 100, '{:.0f}')}%",
        f"- {verdict(added < AIM_ADDED_P99_MS and clean, not math.isnan(added))} p99 added by "
        f"the router < {AIM_ADDED_P99_MS:g} ms at c=16: {_f(added, '{:+.2f}')} ms",
        f"- {verdict(route_p99 < AIM_ROUTE_P99_MS, route_ok)} "
        f"running -> routed p99 < {AIM_ROUTE_P99_MS:g} ms: {_f(route_p99, '{:.0f}')} ms "
        f"(at {plan.latency_runs + 1} routes)",
        f"- {verdict(delete_p99 < AIM_ROUTE_P99_MS, delete_ok)} "
        f"deleted -> 404 p99 < {AIM_ROUTE_P99_MS:g} ms: {_f(delete_p99, '{:.0f}')} ms",
        f"- (no aim) one change at {n_routes} routes -> served: p99 "
        f"{_f(percentile(s.change, 0.99) * 1000, '{:.0f}')} ms",
    ]
    out = (
        header
        + "\n### 1. Through the router vs straight to the container\n\n"
        + "\n".join(through_rows)
        + "\n\n### 2. Route latency\n\n"
        + "\n".join(latency_rows)
        + (f"\n\nAnswers seen while waiting for a route to change:\n{others}" if others else "")
        + f"\n\n### 3. {s.services} routed services\n\n"
        + "\n".join(scale_rows)
        + "\n\n### Aims\n\n"
        + "\n".join(aims)
    )
    return out + noise_report(
        {f"phase {k}": v for k, v in r.other_load.items()},
        "its children, etcd, the daemon, Caddy, the Docker engine or the containers",
    )


def caddy_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["caddy", "version"], capture_output=True, text=True, timeout=10)
        return done.stdout.split()[0] if done.stdout else "?"
    return "?"


# main -------------------------------------------------------------------------------------------


def run(work: Path, plan: Plan, results: Results, stack: contextlib.ExitStack) -> None:
    client = docker_api()
    stack.callback(client.close)
    results.image = ensure_image(client)
    node = results.node = f"bench-{uuid.uuid4().hex[:8]}"
    stack.callback(sweep_node, client, node)  # runs after the daemon is stopped (LIFO)
    server = local_etcd(work / "etcd", work / "etcd.log")
    stack.callback(server.stop)
    server.start(timeout=30)
    daemon: subprocess.Popen[bytes] | None = None
    stack.callback(lambda: stop_process(daemon))
    daemon, listen, router_http, log = start_daemon(work, server.endpoint, node)
    cluster = Cluster(server.endpoint, daemon, listen, router_http, node, log, client, work)
    stack.callback(cluster.api.close)
    stack.callback(cluster.probe.close)
    say(
        f"etcd {server.endpoint}, daemon {listen} (pid {daemon.pid}), router http "
        f"{HOST}:{router_http}, caddy pid {cluster.caddy()}, node {node}"
    )

    def ours() -> list[int]:
        return [*cluster.pids(), *([server.proc.pid] if server.proc else [])]

    try:
        project = cluster.api.json("POST", "/api/projects", {"name": PROJECT}, expect=201)
        cluster.pid = str(project["id"])
        meter = Meter(ours)
        phase_throughput(cluster, plan, results, work)
        results.other_load["1"] = meter.cores()
        meter = Meter(ours)
        phase_latency(cluster, plan, results)
        results.other_load["2"] = meter.cores()
        meter = Meter(ours)
        phase_scale(cluster, plan, results)
        results.other_load["3"] = meter.cores()
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited during the run:\n{tail(log)}")
    except BaseException:
        say(f"--- daemon log tail ---\n{tail(log)}")
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs: about 40 seconds")
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="work in DIR (new or empty) and keep it: the daemon's, etcd's and Caddy's logs",
    )
    args = parser.parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        if any(args.keep.iterdir()):
            say(f"bench_router: {args.keep} is not empty")
            return 2
    plan = QUICK if args.quick else FULL
    for binary, package in (("etcd", "etcd-server"), ("caddy", "caddy"), ("ab", "apache2-utils")):
        if shutil.which(binary) is None:
            say(f"bench_router: {binary} is not on PATH (Debian: {package})")
            return 2
    try:
        with contextlib.closing(docker_api()) as probe_client:
            probe_client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        say(f"bench_router: no Docker engine answers: {exc}")
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    results = Results()
    started = time.monotonic()
    try:
        with (
            (
                contextlib.nullcontext(str(args.keep.resolve()))
                if args.keep is not None
                else tempfile.TemporaryDirectory(prefix="lb-bench-router-")
            ) as tmp,
            contextlib.ExitStack() as stack,
            budget(plan.budget),
        ):
            run(Path(tmp), plan, results, stack)
    except BudgetExceeded as exc:
        say(f"bench_router: {exc} after {time.monotonic() - started:.0f} s")
        print(report(results, plan, args.quick))
        return 1
    say(f"done in {time.monotonic() - started:.0f} s")
    print(report(results, plan, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
