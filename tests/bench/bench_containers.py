"""Containers on real Docker: create, replace, write->reconcile latency, and a 10k cold start.

What it measures, in one run, on loopback only (nothing is pulled: the image is
``lastbackend-test/busybox:1``, reused if present, else imported offline from busybox-static the
way ``tests/e2e/conftest.py`` builds it):

Setup: a private etcd (:class:`~lastbackend.store.embedded.EmbeddedEtcd` in a temporary
directory, on free ports) and ``lastbackend daemon --etcd ... --listen 127.0.0.1:<free> --name
bench-<hex>`` (API, controllers and this host's node agent in one process, at the default log
level ``info``, its data dir in the temporary directory). Every container it makes is labelled
``io.lastbackend.node=bench-<hex>``, and whatever carries that label is force-removed at the end.

1. **Service create.** ``POST /api/projects/{p}/services`` with 3 replicas of busybox ``httpd -f
   -p 8080 -h /www``, ``ports {"8080/TCP": 0}``, memory 32 MB; the clock runs from sending the
   POST until ``GET .../containers`` lists exactly 3 running containers and each answers
   ``GET /`` with the image's page on its published port (polled every 10 ms). Then ``DELETE``
   and wait until Docker has no container of the service and etcd no pod key (timed too). The
   first create after the daemon started is reported on its own row (cold); then N timed runs.
   The controller's "pod scheduled" and the agent's "container started" log lines split the time.
2. **docker kill.** On a 3-replica service, ``docker kill`` one container (rotating); the clock
   runs from just before the kill until 3 running containers, none of them the killed one, are
   listed and answer HTTP. Also shown: kill -> the replacement's ``State.StartedAt`` in Docker,
   and kill -> the agent's "container removed" line for the dead one.
3. **API write -> reconcile.** A service with ``replicas: 0`` (so no container churns), and 200
   sequential ``PATCH .../config {"env": {"BENCH_SEQ": "<n>"}}`` (after a few warm-up writes).
   The code logs nothing per reconcile, so the signal is the services controller's Prometheus
   histogram ``lastbackend_controller_reconcile_duration_seconds_count{controller="services"}``
   on the daemon's ``/metrics``, which the runner bumps when a reconcile *ends*. For each write:
   read the count, send the PATCH, note when its 200 arrives (ack), then poll ``/metrics`` back to
   back until the count grows; the figure is (arrival of that poll's answer) - ack, an *upper
   bound* on ack -> reconcile end, which for a replicas-0 service is ack -> reconcile start plus
   one reconcile (no ``await`` in it; the histogram's mean is shown). The poll's round trip is the
   resolution and is shown. A write whose window held any other reconcile of the services
   controller (a resync) is discarded and shown as such.
4. **Controller cold start.** A second private etcd holding 10,000 services (replicas 0, with an
   image) in 100 projects, written straight into etcd in 128-op transactions with the key layout
   and encoders the API's store uses (``lastbackend.store.services.layout``); one is read back
   through that store as a check. Then ``lastbackend controller --etcd ... --listen ...`` is
   started and ``/readyz`` polled every 10 ms: the time from spawning the process until its body
   says the services controller is ready (leading and synced), and ``VmRSS`` from
   ``/proc/<pid>/status`` at that moment; also until the first reconcile of all 10,000 keys is
   done (count >= 10,000 and queue empty) with RSS and peak RSS (``VmHWM``) then. Runs 3 times
   (1 with ``--quick``); the aims are judged on the worst run.

It prints progress to stderr, then a markdown table (p50/p99/max, nearest rank) and the issue's
aims with PASS/MISS to stdout. Docker, etcd, the daemon and this script share the machine's cores.

Run from the repository root (needs ``etcd`` on PATH and a Docker engine)::

    .venv/bin/python tests/bench/bench_containers.py           # ~45 seconds
    .venv/bin/python tests/bench/bench_containers.py --quick   # ~30 seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from base64 import b64encode
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import docker
import docker.errors

from lastbackend import codec
from lastbackend.model.common import new_id
from lastbackend.model.platform import Meta, ServiceConfig
from lastbackend.node.agent import LABEL_NODE, LABEL_SERVICE
from lastbackend.store import keys
from lastbackend.store import services as service_store
from lastbackend.store.embedded import EmbeddedEtcd
from lastbackend.store.etcd import MAX_TXN_OPS, Op
from lastbackend.store.objects import NameCache

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
# Run as a script from tests/bench/: make the repository's tests package importable.
from tests.baseimage import BASE_IMAGE as IMAGE
from tests.baseimage import INDEX_HTML, ensure_base_image
from tests.support import RawEtcd, free_port

HOST = "127.0.0.1"
HTTPD = "httpd -f -p 8080 -h /www"
PORT = "8080/TCP"
REPLICAS = 3
MEMORY_MB = 32
POLL = 0.01  # seconds between polls of the API while waiting for containers
COLD_PROJECTS = 100
COLD_PER_PROJECT = 100  # 100 x 100 = 10,000 services
COLD_SERVICES = COLD_PROJECTS * COLD_PER_PROJECT
SEED_CONCURRENCY = 8
NOISY = 0.25  # cores used by other processes during a phase above which the run is flagged
RECONCILE_METRIC = "lastbackend_controller_reconcile_duration_seconds"
# The aims.
AIM_WRITE_P99_MS = 100.0
AIM_KILL_S = 3.0
AIM_COLD_S = 10.0
AIM_COLD_RSS_MB = 300.0


@dataclass(frozen=True)
class Plan:
    create_runs: int
    kills: int
    writes: int
    warmup_writes: int
    cold_runs: int
    budget: float  # seconds for the whole run, after which it stops (and cleans up)


FULL = Plan(create_runs=5, kills=10, writes=200, warmup_writes=10, cold_runs=3, budget=290.0)
QUICK = Plan(create_runs=2, kills=4, writes=200, warmup_writes=5, cold_runs=1, budget=88.0)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# processes --------------------------------------------------------------------------------------


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _lastbackend() -> list[str]:
    script = Path(sys.executable).parent / "lastbackend"
    if script.exists():
        return [str(script)]
    found = shutil.which("lastbackend")
    return [found] if found else [sys.executable, "-m", "lastbackend.cli"]


def spawn(args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*_lastbackend(), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,
        )


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path: Path, chars: int = 3000) -> str:
    """The end of a log, without the per-request access lines that would drown it."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    kept = [line for line in lines if '"event": "request"' not in line]
    return "\n".join(kept)[-chars:]


def proc_status_kb(pid: int, field_name: str) -> float:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM); NaN if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return math.nan


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    except (OSError, IndexError, ValueError):
        return math.nan


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every process, every core)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK


DOCKER_COMMS = frozenset(
    {"dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "docker-proxy"}
)


def docker_pids() -> list[int]:
    """The engine's long-lived processes: their CPU is work this bench asked for."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() in DOCKER_COMMS:
                found.append(int(comm.parent.name))
    return found


class LoadMeter:
    """Cores that processes other than the bench's (this script, its etcd and lastbackend
    processes, the Docker engine) used while a phase ran: noise, e.g. other test sessions."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = [os.getpid(), *pids]
        self.busy = machine_busy()
        self.started = time.monotonic()
        self.cpu = {p: cpu_seconds(p) for p in [*self.pids, *docker_pids()]}

    def cores(self, extra: Sequence[int] = ()) -> float:
        busy = machine_busy() - self.busy
        pids = {*self.cpu, *self.pids, *docker_pids(), *extra}
        ours = 0.0
        for pid in pids:
            spent = cpu_seconds(pid) - self.cpu.get(pid, 0.0)
            if not math.isnan(spent):
                ours += max(0.0, spent)
        return max(0.0, busy - ours) / max(1e-9, time.monotonic() - self.started)


def log_events(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a lastbackend log, each with ``t``: its timestamp as epoch seconds."""
    events = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
            event["t"] = datetime.fromisoformat(
                event["timestamp"].replace("Z", "+00:00")
            ).timestamp()
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        events.append(event)
    return events


def first_event(events: list[dict[str, Any]], after: float, name: str, **match: str) -> float:
    """Epoch time of the first event named ``name`` at or after ``after`` matching ``match``."""
    for event in events:
        if (
            event.get("event") == name
            and event["t"] >= after - 0.001  # log stamps are microseconds, time.time() finer
            and all(event.get(k) == v for k, v in match.items())
        ):
            return float(event["t"])
    return math.nan


# HTTP -------------------------------------------------------------------------------------------


class Http:
    """One keep-alive connection to a lastbackend process (the API or a controller's /metrics)."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        host, port = address.rsplit(":", 1)
        self.host, self.port, self.timeout = host, int(port), timeout
        self.conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                self.close()  # a keep-alive connection the server closed: one fresh attempt
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: object = None, expect: int = 200) -> Any:
        status, raw = self.request(method, path, body)
        if status != expect:
            raise RuntimeError(f"{method} {path}: {status} {raw[:300]!r}")
        return json.loads(raw) if raw else None


def probe(port: int) -> bool:
    """The container's httpd answers the image's page on the published port."""
    conn = http.client.HTTPConnection(HOST, port, timeout=0.5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status == 200 and resp.read() == INDEX_HTML
    except (http.client.HTTPException, OSError):
        return False
    finally:
        conn.close()


def get_json(url: str, timeout: float = 1.0) -> tuple[int, Any]:
    """GET ``url``; (status, parsed body) for 2xx-5xx answers, (0, None) if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return 0, None


def etcd_count(endpoint: str, prefix: str) -> int:
    """Keys under ``prefix``, through etcd's JSON gateway (no gRPC channel for a count)."""
    body = {
        "key": b64encode(prefix.encode()).decode(),
        "range_end": b64encode(keys.prefix_end(prefix)).decode(),
        "count_only": True,
    }
    req = urllib.request.Request(f"http://{endpoint}/v3/kv/range", data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(json.loads(resp.read()).get("count", 0))


def controller_metrics(text: bytes, controller: str) -> dict[str, float]:
    """``lastbackend_controller_*`` samples of one controller; buckets as ``name:le``."""
    out: dict[str, float] = {}
    tag = f'controller="{controller}"'.encode()
    for line in text.splitlines():
        if not line.startswith(b"lastbackend_controller_") or tag not in line:
            continue
        head, _, value = line.rpartition(b" ")
        name = head.split(b"{", 1)[0].decode()
        le = re.search(rb'le="([^"]+)"', head)
        if le:
            name = f"{name}:{le.group(1).decode()}"
        out[name] = float(value)
    return out


# Docker -----------------------------------------------------------------------------------------


def docker_api() -> docker.APIClient:
    url = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    return docker.APIClient(base_url=url, version="auto", timeout=60)


def ensure_image(api: docker.APIClient) -> str:
    return "imported offline" if ensure_base_image(api) else "present"


def sweep_node(api: docker.APIClient, node: str) -> int:
    """Force-remove every container and volume labelled with the bench's node name."""
    selector = {"label": [f"{LABEL_NODE}={node}"]}
    removed = 0
    for container in api.containers(all=True, filters=selector):
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(container["Id"], force=True, v=True)
            removed += 1
    for volume in api.volumes(filters=selector).get("Volumes") or []:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_volume(volume["Name"], force=True)
    return removed


def _docker_time(raw: str) -> float:
    """An RFC 3339 time from Docker as epoch seconds (nanoseconds cut to microseconds)."""
    raw = re.sub(r"\.(\d+)", lambda m: "." + m.group(1)[:6].ljust(6, "0"), raw, count=1)
    return datetime.fromisoformat(raw.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def created_and_started(api: docker.APIClient, container_id: str) -> tuple[float, float]:
    """Docker's ``Created`` and ``State.StartedAt`` of a container, as epoch seconds."""
    try:
        raw = api.inspect_container(container_id)
    except docker.errors.NotFound:
        return math.nan, math.nan
    return _docker_time(raw["Created"]), _docker_time(raw["State"]["StartedAt"])


# results ----------------------------------------------------------------------------------------


@dataclass
class ColdStart:
    synced: float  # s from spawn until /readyz says the services controller is ready
    rss_synced_mb: float  # VmRSS then
    synced_log: float  # s from spawn to the services controller's "controller synced" line
    listening: float  # s from spawn to its "listening" log line (interpreter, imports, app)
    leading: float  # s from spawn to "controller leading" of the services controller
    stall: float  # s, the longest a /readyz request waited for its answer
    all_ready: float  # s until /readyz answers 200 (every controller)
    cpu_synced: float  # CPU seconds the controller process had used at ``synced``
    drained: float  # s until the first reconcile of every service is done
    hwm_mb: float  # VmHWM at the end
    other_load: float  # cores used outside the bench from spawn to synced


@dataclass
class Results:
    node: str = ""
    image: str = ""
    cold_create: float = math.nan
    create: list[float] = field(default_factory=list)
    create_scheduled: list[float] = field(default_factory=list)
    create_first: list[float] = field(default_factory=list)
    create_started: list[float] = field(default_factory=list)
    delete_clean: list[float] = field(default_factory=list)
    kill_http: list[float] = field(default_factory=list)
    kill_created: list[float] = field(default_factory=list)
    kill_docker: list[float] = field(default_factory=list)
    kill_removed: list[float] = field(default_factory=list)
    kill_started: list[float] = field(default_factory=list)
    write_ack: list[float] = field(default_factory=list)
    write_reconcile: list[float] = field(default_factory=list)
    poll_rtt: list[float] = field(default_factory=list)
    write_discarded: int = 0
    write_first_poll: int = 0  # kept writes whose reconcile the first poll after the ack showed
    write_timeouts: int = 0
    reconcile_mean: float = math.nan
    reconcile_under_1ms: float = math.nan
    daemon_cpu_per_write: float = math.nan
    seed_seconds: float = math.nan
    cold: list[ColdStart] = field(default_factory=list)
    other_load: dict[str, float] = field(default_factory=dict)  # phase -> cores (noise)


# phases 1-3: the daemon -------------------------------------------------------------------------


@dataclass
class Created:
    name: str
    sid: str
    sent_wall: float
    sent: float  # perf_counter


class Cluster:
    """The daemon under test, its API, and the Docker engine it drives."""

    def __init__(
        self, etcd: str, listen: str, node: str, log: Path, docker_client: docker.APIClient
    ) -> None:
        self.etcd = etcd
        self.listen = listen
        self.node = node
        self.log = log
        self.docker = docker_client
        self.api = Http(listen)
        self.metrics = Http(listen)
        self.project = "bench"

    def services(self) -> str:
        return f"/api/projects/{self.project}/services"

    def create(self, name: str, replicas: int) -> Created:
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
        sent_wall, sent = time.time(), time.perf_counter()
        body = self.api.json("POST", self.services(), payload, expect=201)
        return Created(name, body["id"], sent_wall, sent)

    def containers(self, name: str) -> list[dict[str, Any]]:
        body = self.api.json("GET", f"{self.services()}/{name}/containers?per_page=100")
        return list(body["resources"])

    def wait_serving(
        self, name: str, n: int, timeout: float, exclude: frozenset[str] = frozenset()
    ) -> tuple[float, dict[str, dict[str, Any]]]:
        """Poll until exactly ``n`` running containers (none in ``exclude``) answer HTTP.

        Returns the perf_counter time the last of them first answered, and them by id.
        """
        deadline = time.perf_counter() + timeout
        answered: dict[str, float] = {}
        while True:
            items = self.containers(name)
            running = {
                c["id"]: c for c in items if c["status"] == "running" and c["id"] not in exclude
            }
            for cid, c in running.items():
                port = (c.get("ports") or {}).get(PORT)
                if cid not in answered and port and probe(int(port)):
                    answered[cid] = time.perf_counter()
            if len(running) == n and all(cid in answered for cid in running):
                return max(answered[cid] for cid in running), running
            if time.perf_counter() > deadline:
                raise TimeoutError(
                    f"service {name}: after {timeout:g} s {len(running)} running containers "
                    f"(want {n}), {len([c for c in running if c in answered])} answering: "
                    f"{json.dumps(items)[:1000]}"
                )
            time.sleep(POLL)

    def delete_and_wait_clean(self, created: Created, timeout: float = 30.0) -> float:
        """DELETE the service; seconds until no container, pod or service key is left."""
        started = time.perf_counter()
        self.api.json("DELETE", f"{self.services()}/{created.name}", expect=204)
        selector = {"label": [f"{LABEL_SERVICE}={created.sid}"]}
        while True:
            left = len(self.docker.containers(all=True, filters=selector))
            left += etcd_count(self.etcd, keys.PODS) + etcd_count(self.etcd, keys.HELPER_PODS)
            if left == 0:
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"service {created.name}: {left} things left after {timeout} s")
            time.sleep(0.02)

    def reconcile_count(self) -> tuple[dict[str, float], float, float]:
        """The services controller's metrics, and the perf_counter times around the poll."""
        sent = time.perf_counter()
        status, raw = self.metrics.request("GET", "/metrics")
        received = time.perf_counter()
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return controller_metrics(raw, "services"), sent, received


def start_daemon(work: Path, etcd: str, node: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    listen = f"{HOST}:{free_port()}"
    log = work / "daemon.log"
    args = ["daemon", "--etcd", etcd, "--listen", listen, "--name", node, "--no-router"]
    args += ["--data-dir", str(work / "daemon-data"), "--log-level", "info"]
    proc = spawn(args, log)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode}:\n{tail(log)}")
        status, _ = get_json(f"http://{listen}/readyz")
        if status == 200 and etcd_count(etcd, keys.node(node)) == 1:
            return proc, listen, log
        if time.monotonic() > deadline:
            raise TimeoutError(f"the daemon is not ready after 60 s:\n{tail(log)}")
        time.sleep(0.05)


def phase_create(cluster: Cluster, plan: Plan, results: Results) -> list[Created]:
    say(f"1. service create ({REPLICAS} replicas) -> all running and answering HTTP")
    runs: list[Created] = []
    for i in range(plan.create_runs + 1):
        created = cluster.create(f"create-{i}", REPLICAS)
        done, _ = cluster.wait_serving(created.name, REPLICAS, timeout=60)
        seconds = done - created.sent
        clean = cluster.delete_and_wait_clean(created)
        if i == 0:
            results.cold_create = seconds
            label = "cold"
        else:
            results.create.append(seconds)
            results.delete_clean.append(clean)
            runs.append(created)
            label = f"run {i}"
        say(f"  {label}: all answering after {seconds:.3f} s; delete -> clean {clean:.3f} s")
    return runs


@dataclass
class Kill:
    pod: str
    wall: float
    docker_started: float  # epoch, the replacement's State.StartedAt


def phase_kill(cluster: Cluster, plan: Plan, results: Results) -> list[Kill]:
    say(f"2. docker kill of one of {REPLICAS} containers -> replacement running and answering")
    created = cluster.create("kill", REPLICAS)
    _, current = cluster.wait_serving(created.name, REPLICAS, timeout=60)
    kills: list[Kill] = []
    for k in range(plan.kills):
        victim = sorted(current)[k % len(current)]
        pod = current[victim]["pod"]
        wall, started = time.time(), time.perf_counter()
        cluster.docker.kill(victim)
        done, after = cluster.wait_serving(
            created.name, REPLICAS, timeout=30, exclude=frozenset({victim})
        )
        results.kill_http.append(done - started)
        new = [cid for cid in after if cid not in current]
        docker_created, docker_started = (
            created_and_started(cluster.docker, new[0]) if len(new) == 1 else (math.nan, math.nan)
        )
        results.kill_created.append(docker_created - wall)
        results.kill_docker.append(docker_started - wall)
        kills.append(Kill(pod, wall, docker_started))
        say(
            f"  kill {k + 1}: replacement started by Docker after {docker_started - wall:.3f} s, "
            f"answering after {done - started:.3f} s"
        )
        current = after
        time.sleep(0.3)  # let the agent finish reporting before the next kill
    cluster.delete_and_wait_clean(created)
    return kills


def phase_writes(cluster: Cluster, plan: Plan, results: Results, daemon_pid: int) -> None:
    say(f"3. {plan.writes} config PATCHes on a replicas-0 service -> services reconcile")
    created = cluster.create("idle", 0)
    path = f"{cluster.services()}/{created.name}/config"
    time.sleep(0.5)  # the create's own reconciles
    first, _, _ = cluster.reconcile_count()
    cpu_before = cpu_seconds(daemon_pid)
    count = f"{RECONCILE_METRIC}_count"
    pending: tuple[float, float, bool] | None = None  # (ack time, reconcile seen, first poll)
    expected = 0.0
    seq = 0
    attempts = 0
    while (
        len(results.write_reconcile) + (pending is not None) < plan.writes
        and attempts < plan.writes * 3
    ):
        before, _, _ = cluster.reconcile_count()
        if pending is not None:
            # Exactly one reconcile happened for the last write (none from a resync meanwhile).
            if before[count] == expected:
                results.write_ack.append(pending[0])
                results.write_reconcile.append(pending[1])
                results.write_first_poll += pending[2]
            else:
                results.write_discarded += 1
            pending = None
        seq += 1
        attempts += 1
        sent = time.perf_counter()
        status, raw = cluster.api.request("PATCH", path, {"env": {"BENCH_SEQ": str(seq)}})
        ack = time.perf_counter()
        if status != 200:
            raise RuntimeError(f"PATCH {path}: {status} {raw[:300]!r}")
        seen = math.nan
        now_metrics = before
        polls = 0
        while time.perf_counter() - ack < 2.0:
            polls += 1
            now_metrics, poll_sent, poll_received = cluster.reconcile_count()
            results.poll_rtt.append(poll_received - poll_sent)
            if now_metrics[count] > before[count]:
                if now_metrics[count] == before[count] + 1:
                    seen = poll_received
                break
        if math.isnan(seen):
            results.write_timeouts += int(now_metrics[count] == before[count])
            results.write_discarded += int(now_metrics[count] > before[count] + 1)
            continue
        if seq > plan.warmup_writes:
            pending = (ack - sent, seen - ack, polls == 1)
            expected = before[count] + 1
    last, _, _ = cluster.reconcile_count()
    if pending is not None:
        if last[count] == expected:
            results.write_ack.append(pending[0])
            results.write_reconcile.append(pending[1])
            results.write_first_poll += pending[2]
        else:
            results.write_discarded += 1
    reconciles = last[count] - first[count]
    if reconciles > 0:
        results.reconcile_mean = (
            last[f"{RECONCILE_METRIC}_sum"] - first[f"{RECONCILE_METRIC}_sum"]
        ) / reconciles
        key = f"{RECONCILE_METRIC}_bucket:0.001"
        results.reconcile_under_1ms = (last[key] - first[key]) / reconciles
    results.daemon_cpu_per_write = (cpu_seconds(daemon_pid) - cpu_before) / max(1, seq)
    say(
        f"  {len(results.write_reconcile)} kept, {results.write_discarded} discarded, "
        f"{results.write_timeouts} timed out; "
        f"p50 {percentile(results.write_reconcile, 0.5) * 1000:.2f} ms "
        f"p99 {percentile(results.write_reconcile, 0.99) * 1000:.2f} ms"
    )
    cluster.delete_and_wait_clean(created)


def breakdowns(cluster: Cluster, runs: list[Created], kills: list[Kill], results: Results) -> None:
    """Split phases 1 and 2 with the daemon's own log lines (wall-clock stamps)."""
    events = log_events(cluster.log)
    for run in runs:
        scheduled = [
            e for e in events if e.get("event") == "pod scheduled" and e.get("service") == run.sid
        ][:REPLICAS]
        if len(scheduled) < REPLICAS:
            continue
        results.create_scheduled.append(max(e["t"] for e in scheduled) - run.sent_wall)
        starts = [
            first_event(events, run.sent_wall, "container started", pod=e["pod"]) for e in scheduled
        ]
        results.create_first.append(min(starts) - run.sent_wall)
        results.create_started.append(max(starts) - run.sent_wall)
    for kill in kills:
        removed = first_event(events, kill.wall, "container removed", pod=kill.pod)
        started = first_event(events, kill.wall, "container started", pod=kill.pod)
        results.kill_removed.append(removed - kill.wall)
        results.kill_started.append(started - kill.wall)


# phase 4: controller cold start -----------------------------------------------------------------


async def seed(
    endpoint: str, projects: int = COLD_PROJECTS, per_project: int = COLD_PER_PROJECT
) -> tuple[str, str]:
    """Write ``projects`` x ``per_project`` services as the API's store lays them out; one
    project and service name to check them by."""
    stamp = codec.format_time(datetime.now(UTC))
    config = codec.structure(
        {
            "image": IMAGE,
            "replicas": 0,
            "memory": MEMORY_MB,
            "command": HTTPD,
            "ports": {PORT: 0},
        },
        ServiceConfig,
    )
    batches: list[list[Op]] = []
    batch: list[Op] = []

    def add(ops: list[Op]) -> None:
        nonlocal batch
        if len(batch) + len(ops) > MAX_TXN_OPS:
            batches.append(batch)
            batch = []
        batch.extend(ops)

    for p in range(projects):
        pid, pname = new_id(), f"cold-{p:06d}"
        meta = codec.structure({"name": pname, "created": stamp, "updated": stamp}, Meta)
        add(
            [
                Op.put(keys.project_name(pname), pid),
                Op.put(keys.project_meta(pid), codec.dumps(meta)),
            ]
        )
        layout = service_store.layout(pid)
        for s in range(per_project):
            sid, sname = new_id(), f"svc-{s:04d}"
            values: dict[str, Any] = {
                "meta": codec.structure(
                    {"name": sname, "created": stamp, "updated": stamp, "description": "bench"},
                    Meta,
                ),
                "config": config,
                "source": None,
                "domains": {},
                "image": IMAGE,
            }
            parts = layout.parts(sid)
            ops = [Op.put(layout.index_key(sname), sid)]
            ops += [
                Op.put(parts[part], layout.codecs[part].encode(value))
                for part, value in values.items()
                if value is not None
            ]
            add(ops)
    if batch:
        batches.append(batch)
    sem = asyncio.Semaphore(SEED_CONCURRENCY)
    async with RawEtcd([endpoint]) as etcd:

        async def write(ops: list[Op]) -> None:
            async with sem:
                await etcd.txn([], ops)

        await asyncio.gather(*(write(b) for b in batches))
        # Read one back through the API's own store: the layout is what the API would read.
        project, service = f"cold-{projects - 1:06d}", f"svc-{per_project - 1:04d}"
        pid = await etcd.get(keys.project_name(project))
        assert pid is not None
        store = service_store.services(etcd, NameCache(), pid.value.decode())
        record = await store.get(service)
        page = await store.list(page=1, per_page=1)
        if record.values["config"].replicas != 0 or page.total != per_project:
            raise RuntimeError(f"seeded services do not read back: {record}, total {page.total}")
    return project, service


def cold_start(
    work: Path,
    etcd: str,
    etcd_pids: Sequence[int],
    run: int,
    expected: int = COLD_SERVICES,
    within: float = 60.0,
) -> ColdStart:
    listen = f"{HOST}:{free_port()}"
    log = work / f"controller-{run}.log"
    args = ["controller", "--etcd", etcd, "--listen", listen]
    args += ["--data-dir", str(work / "controller-data"), "--log-level", "info"]
    meter = LoadMeter(etcd_pids)
    spawn_wall, spawned = time.time(), time.perf_counter()
    proc = spawn(args, log)
    synced = all_ready = other = rss_synced = cpu_synced = drained = hwm = math.nan
    stall = 0.0
    try:
        while math.isnan(all_ready):
            if proc.poll() is not None:
                raise RuntimeError(f"the controller exited with {proc.returncode}:\n{tail(log)}")
            asked = time.perf_counter()
            status, body = get_json(f"http://{listen}/readyz", timeout=30)
            now = time.perf_counter()
            if status:
                stall = max(stall, now - asked)
            services = ((body or {}).get("controllers") or {}).get("services") or {}
            if math.isnan(synced) and services.get("ready") and services.get("leading"):
                synced = now - spawned
                rss_synced = proc_status_kb(proc.pid, "VmRSS") / 1024
                cpu_synced = cpu_seconds(proc.pid)
                other = meter.cores([proc.pid])
            if status == 200:
                all_ready = now - spawned
            elif now - spawned > within:
                raise TimeoutError(f"the controller is not ready after {within:g} s:\n{tail(log)}")
            else:
                time.sleep(0.01)
        metrics = Http(listen, timeout=30)
        try:
            while time.perf_counter() - spawned < within * 1.5:
                asked = time.perf_counter()
                status, raw = metrics.request("GET", "/metrics")
                stall = max(stall, time.perf_counter() - asked)
                m = controller_metrics(raw, "services")
                count = m.get(f"{RECONCILE_METRIC}_count", 0.0)
                if count >= expected and m.get("lastbackend_controller_queue_depth") == 0:
                    drained = time.perf_counter() - spawned
                    break
                time.sleep(0.05)
        finally:
            metrics.close()
        hwm = proc_status_kb(proc.pid, "VmHWM") / 1024
    finally:
        stop_process(proc)
    events = log_events(log)
    return ColdStart(
        synced=synced,
        rss_synced_mb=rss_synced,
        synced_log=first_event(events, spawn_wall, "controller synced", controller="services")
        - spawn_wall,
        listening=first_event(events, spawn_wall, "listening") - spawn_wall,
        leading=first_event(events, spawn_wall, "controller leading", controller="services")
        - spawn_wall,
        stall=stall,
        all_ready=all_ready,
        cpu_synced=cpu_synced,
        drained=drained,
        hwm_mb=hwm,
        other_load=other,
    )


def phase_cold(work: Path, plan: Plan, results: Results, stack: contextlib.ExitStack) -> None:
    say(f"4. controller cold start over {COLD_SERVICES} services (replicas 0)")
    server = EmbeddedEtcd(
        work / "etcd-cold",
        client=f"{HOST}:{free_port()}",
        peer=f"{HOST}:{free_port()}",
        log=work / "etcd-cold.log",
    )
    stack.callback(server.stop)
    server.start(timeout=30)
    started = time.perf_counter()
    asyncio.run(seed(server.endpoint))
    results.seed_seconds = time.perf_counter() - started
    say(f"  seeded {COLD_SERVICES} services in {results.seed_seconds:.1f} s")
    for run in range(plan.cold_runs):
        pids = [server.proc.pid] if server.proc else []
        cold = cold_start(work, server.endpoint, pids, run)
        results.cold.append(cold)
        say(
            f"  run {run + 1}: /readyz says services synced after {cold.synced:.2f} s (RSS "
            f"{cold.rss_synced_mb:.0f} MB; its log says synced at {cold.synced_log:.2f} s), all "
            f"reconciled after {cold.drained:.2f} s, peak RSS {cold.hwm_mb:.0f} MB"
        )
    server.stop()


# report -----------------------------------------------------------------------------------------


def _row(
    label: str, values: Sequence[float], unit: str, scale: float, aim: str = "", verdict: str = ""
) -> str:
    clean = [v for v in values if not math.isnan(v)]
    fmt = "{:.0f}" if unit == "MB" else ("{:.2f}" if unit == "ms" else "{:.3f}")

    def cell(q: float) -> str:
        v = percentile(clean, q)
        return "n/a" if math.isnan(v) else fmt.format(v * scale)

    return (
        f"| {label} | {len(clean)} | {unit} | {cell(0.5)} | {cell(0.99)} | {cell(1.0)} "
        f"| {aim} | {verdict} |"
    )


def verdict(value: float, limit: float, clean: bool = True) -> str:
    if math.isnan(value):
        return "MISS (not measured)"
    return "PASS" if value < limit and clean else "MISS"


def report(results: Results, plan: Plan, quick: bool) -> str:
    r = results
    write_p99 = percentile(r.write_reconcile, 0.99) * 1000
    kill_p99 = percentile(r.kill_http, 0.99)
    cold_worst = max((c.synced for c in r.cold), default=math.nan)
    rss_worst = max((c.rss_synced_mb for c in r.cold), default=math.nan)
    write_ok = len(r.write_reconcile) >= plan.writes and r.write_timeouts == 0
    kill_ok = len(r.kill_http) == plan.kills
    lines = [
        "| measurement | n | unit | p50 | p99 | max | aim | result |",
        "|---|--:|---|--:|--:|--:|---|---|",
        _row("1. create, first after daemon start (cold) -> 3 answering", [r.cold_create], "s", 1),
        _row("1. service create (3 replicas) -> all 3 running + answering HTTP", r.create, "s", 1),
        _row("   create -> 3 pods scheduled (controller log)", r.create_scheduled, "s", 1),
        _row("   create -> first container started (agent log)", r.create_first, "s", 1),
        _row("   create -> 3 containers started (agent log)", r.create_started, "s", 1),
        _row("   delete -> no container / pod key left", r.delete_clean, "s", 1),
        _row(
            "2. docker kill -> replacement running + answering HTTP",
            r.kill_http,
            "s",
            1,
            f"p99 < {AIM_KILL_S:g} s",
            verdict(kill_p99, AIM_KILL_S, kill_ok),
        ),
        _row("   kill -> dead container removed (agent log)", r.kill_removed, "s", 1),
        _row("   kill -> replacement Created (Docker)", r.kill_created, "s", 1),
        _row("   kill -> replacement State.StartedAt (Docker)", r.kill_docker, "s", 1),
        _row("   kill -> replacement started (agent log)", r.kill_started, "s", 1),
        _row("3. PATCH .../config acknowledged (write latency)", r.write_ack, "ms", 1000),
        _row(
            "3. write ack -> services reconcile of it done (<=, /metrics poll)",
            r.write_reconcile,
            "ms",
            1000,
            f"p99 < {AIM_WRITE_P99_MS:g} ms",
            verdict(write_p99, AIM_WRITE_P99_MS, write_ok),
        ),
        _row("   /metrics poll round trip (the resolution)", r.poll_rtt, "ms", 1000),
        _row(
            f"4. cold start, {COLD_SERVICES} services: spawn -> services synced (/readyz)",
            [c.synced for c in r.cold],
            "s",
            1,
            f"worst < {AIM_COLD_S:g} s",
            verdict(cold_worst, AIM_COLD_S),
        ),
        _row(
            "4. RSS at synced (VmRSS)",
            [c.rss_synced_mb for c in r.cold],
            "MB",
            1,
            f"worst < {AIM_COLD_RSS_MB:g} MB",
            verdict(rss_worst, AIM_COLD_RSS_MB),
        ),
        _row(
            "   spawn -> 'listening' log line (interpreter, imports, app)",
            [c.listening for c in r.cold],
            "s",
            1,
        ),
        _row("   spawn -> services controller leading (log)", [c.leading for c in r.cold], "s", 1),
        _row(
            "   spawn -> services 'controller synced' log line",
            [c.synced_log for c in r.cold],
            "s",
            1,
        ),
        _row(
            "   longest wait for a /readyz or /metrics answer (loop stall)",
            [c.stall for c in r.cold],
            "s",
            1,
        ),
        _row(
            "   spawn -> /readyz 200 (services and gc synced)",
            [c.all_ready for c in r.cold],
            "s",
            1,
        ),
        _row(
            f"   spawn -> first reconcile of all {COLD_SERVICES} done",
            [c.drained for c in r.cold],
            "s",
            1,
        ),
        _row(
            "   CPU seconds used by the controller at synced (/readyz)",
            [c.cpu_synced for c in r.cold],
            "s",
            1,
        ),
        _row("   peak RSS (VmHWM) at the end", [c.hwm_mb for c in r.cold], "MB", 1),
    ]
    load = os.getloadavg()[0]
    header = (
        f"\n## lastbackend containers benchmark{' (--quick)' if quick else ''}\n\n"
        f"Python {platform.python_version()}, {os.cpu_count()} cores shared by Docker, etcd, the "
        f"daemon/controller and this script; loopback only; node `{r.node}`, image `{IMAGE}` "
        f"({r.image}). Nearest-rank percentiles (with n < 100, p99 is the max). Load average at "
        f"the end: {load:.2f}.\n\n"
        f'Phase 3 signal: `{RECONCILE_METRIC}_count{{controller="services"}}` on the daemon\'s '
        "`/metrics` (bumped when a reconcile ends; nothing is logged per reconcile): each figure "
        "is an upper bound, from the PATCH's 200 arriving to the arrival of the first `/metrics` "
        "answer showing the reconcile done. "
        f"{len(r.write_reconcile)} writes kept ({r.write_first_poll} of them seen done by the "
        "first poll after the ack, i.e. within one poll round trip), "
        f"{r.write_discarded} discarded (another "
        f"reconcile in the window), {r.write_timeouts} with no reconcile within 2 s; services "
        f"reconciles meanwhile took {r.reconcile_mean * 1e6:.0f} µs on average, "
        f"{r.reconcile_under_1ms:.0%} under 1 ms; daemon CPU "
        f"{r.daemon_cpu_per_write * 1e3:.2f} ms per write (PATCH, access log, reconciles of "
        f"services and gc, and the `/metrics` polls). Phase 4: {COLD_SERVICES} services seeded "
        f"into etcd in {r.seed_seconds:.1f} s.\n"
    )
    aims = [
        f"- {verdict(write_p99, AIM_WRITE_P99_MS, write_ok)} p99 write -> reconcile < "
        f"{AIM_WRITE_P99_MS:g} ms: {write_p99:.2f} ms (upper bound, n={len(r.write_reconcile)})",
        f"- {verdict(kill_p99, AIM_KILL_S, kill_ok)} kill -> running < {AIM_KILL_S:g} s: p99 "
        f"{kill_p99:.3f} s to answering HTTP (n={len(r.kill_http)}; Docker start p99 "
        f"{percentile(r.kill_docker, 0.99):.3f} s)",
        f"- {verdict(cold_worst, AIM_COLD_S)} {COLD_SERVICES} cold start < {AIM_COLD_S:g} s: "
        f"worst {cold_worst:.2f} s of {len(r.cold)}",
        f"- {verdict(rss_worst, AIM_COLD_RSS_MB)} {COLD_SERVICES} cold start < "
        f"{AIM_COLD_RSS_MB:g} MB: worst {rss_worst:.0f} MB RSS at synced",
    ]
    noise = {f"phase {k}": v for k, v in r.other_load.items()}
    noise |= {f"cold start {i + 1}": c.other_load for i, c in enumerate(r.cold)}
    out = header + "\n" + "\n".join(lines) + "\n\n### Aims\n\n" + "\n".join(aims)
    return out + noise_report(noise, "its etcd, lastbackend processes or the Docker engine")


def noise_report(noise: dict[str, float], ours: str) -> str:
    """The CPU other processes used per phase, and a warning when any phase was noisy."""
    out = (
        f"\n\nCPU used by processes outside the bench (not this script, {ours}), in cores: "
        + ", ".join(f"{k} {v:.2f}" for k, v in noise.items())
        + "."
    )
    noisy = [k for k, v in noise.items() if v > NOISY]
    if noisy:
        out += (
            f"\n\nWARNING: other processes used more than {NOISY:g} of {os.cpu_count()} cores "
            f"during {', '.join(noisy)}: those figures measure a shared machine; run again when "
            "it is idle."
        )
    return out


# main -------------------------------------------------------------------------------------------


class BudgetExceeded(Exception):
    pass


_signalled = False


def _terminate(signum: int, frame: FrameType | None) -> None:
    global _signalled
    if _signalled:
        return  # already unwinding: let the cleanup finish
    _signalled = True
    raise SystemExit(128 + signum)


def _alarm(signum: int, frame: FrameType | None) -> None:
    global _signalled
    if _signalled:
        return
    _signalled = True
    raise BudgetExceeded("the run went over its time budget; stopping")


@contextlib.contextmanager
def budget(seconds: float) -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run(work: Path, plan: Plan, results: Results, stack: contextlib.ExitStack) -> None:
    client = docker_api()
    stack.callback(client.close)
    results.image = ensure_image(client)
    node = results.node = f"bench-{uuid.uuid4().hex[:8]}"
    stack.callback(sweep_node, client, node)  # runs after the daemon is stopped (LIFO)

    server = EmbeddedEtcd(
        work / "etcd",
        client=f"{HOST}:{free_port()}",
        peer=f"{HOST}:{free_port()}",
        log=work / "etcd.log",
    )
    stack.callback(server.stop)
    server.start(timeout=30)
    daemon: subprocess.Popen[bytes] | None = None
    stack.callback(lambda: stop_process(daemon))
    daemon, listen, log = start_daemon(work, server.endpoint, node)
    say(f"etcd {server.endpoint}, daemon {listen} (pid {daemon.pid}), node {node}")
    cluster = Cluster(server.endpoint, listen, node, log, client)
    stack.callback(cluster.api.close)
    stack.callback(cluster.metrics.close)
    ours = [daemon.pid, *([server.proc.pid] if server.proc else [])]
    try:
        cluster.api.json("POST", "/api/projects", {"name": cluster.project}, expect=201)
        meter = LoadMeter(ours)
        runs = phase_create(cluster, plan, results)
        results.other_load["1"] = meter.cores()
        meter = LoadMeter(ours)
        kills = phase_kill(cluster, plan, results)
        results.other_load["2"] = meter.cores()
        meter = LoadMeter(ours)
        phase_writes(cluster, plan, results, daemon.pid)
        results.other_load["3"] = meter.cores()
        breakdowns(cluster, runs, kills, results)
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited during the run:\n{tail(log)}")
    except BaseException:
        say(f"--- daemon log tail ---\n{tail(log)}")
        raise
    stop_process(daemon)
    left = sweep_node(client, node)
    if left:
        say(f"  note: {left} containers of the bench node were still there after the phases")
    server.stop()
    phase_cold(work, plan, results, stack)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs: about 30 seconds")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if shutil.which("etcd") is None:
        say("bench_containers: the etcd binary is not on PATH (Debian: etcd-server)")
        return 2
    try:
        with contextlib.closing(docker_api()) as probe_client:
            probe_client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        say(f"bench_containers: no Docker engine answers: {exc}")
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    results = Results()
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="lb-bench-containers-") as tmp,
        contextlib.ExitStack() as stack,
        budget(plan.budget),
    ):
        run(Path(tmp), plan, results, stack)
    say(f"done in {time.monotonic() - started:.0f} s")
    print(report(results, plan, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
