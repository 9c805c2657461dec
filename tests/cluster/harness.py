"""The whole cluster as an operator runs it, and the load the fault tests put on it.

:class:`Cluster` starts every process kind twice, each its own OS process through the console
script (:class:`tests.e2e.harness.Harness` starts them and cleans up): two ``lastbackend api``,
two ``controller``, two ``router`` (each supervising its own Caddy, each with a data dir of its
own) and two ``node`` agents, the first on this machine's engine and the second on an engine of
its own (:func:`tests.e2e.conftest.extra_engine`). Every process gets the same secret key and
node token, and ``node.eviction_timeout`` is shortened to :data:`EVICTION` s (the default 300 s
would make the long node fault last minutes); the node lease (``node.agent.NODE_TTL``, 30 s) and
the controllers' election TTL (15 s) are not settings, so those faults last that long.

:class:`Writer` keeps a ledger of acknowledged writes (project creates, updates, deletes through
both API processes, failing over to the other on a connection error or a 5xx), and
:meth:`Writer.verify` checks the key tree against it. :class:`RouterLoad` is a client with both
routers' addresses, as DNS with two A records gives it: each request to the next router, and on
a connection failure the same request once to the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import docker

from lastbackend.store import keys
from tests.e2e.harness import (
    LABEL_NODE,
    LABEL_POD,
    LABEL_SERVICE,
    Harness,
    Proc,
    eventually,
)
from tests.e2e.test_routing import SERVE_ID
from tests.support import RawEtcd, free_ports

EVICTION = 3.0
"""``node.eviction_timeout`` of the cluster (LB_NODE_EVICTION_TIMEOUT), in seconds."""
PROJECT = "shop"
SERVICE = "web"
HOST = f"{SERVICE}.{PROJECT}.lb.localhost"
REPLICAS = 2


@dataclass
class Engine:
    """One Docker engine and the node agent's name on it."""

    url: str
    api: docker.APIClient
    node: str


class Cluster:
    """Two of every process on ``etcd`` (``host:port,...``), with ``extra`` etcd flags
    (``--etcd-ca`` and the like) for every one of them."""

    def __init__(self, h: Harness, etcd: str, engines: list[Engine], extra: list[str]) -> None:
        self.h = h
        self.etcd = etcd
        self.engines = engines
        self.extra = extra
        self.apis: list[Proc] = []
        self.controllers: list[Proc] = []
        self.routers: list[Proc] = []
        self.router_ports: list[int] = []
        self.nodes: dict[str, Proc] = {}
        self.sid = ""

    # processes

    def env(self) -> dict[str, str]:
        return {"LB_NODE_EVICTION_TIMEOUT": str(EVICTION)}

    def start_api(self) -> Proc:
        http = self.router_ports[0] if self.router_ports else 8080
        proc = self.h.start(
            "api", self.etcd, *self.extra, "--router-http", f"127.0.0.1:{http}", env=self.env()
        )
        return proc

    def start_controller(self) -> Proc:
        return self.h.start("controller", self.etcd, *self.extra, env=self.env())

    def start_router(self, index: int) -> Proc:
        http, https = self.router_ports[index], free_ports(1)[0]
        data = self.h.tmp / f"router-{index}"
        return self.h.start(
            "router",
            self.etcd,
            *self.extra,
            "--router-http",
            f"127.0.0.1:{http}",
            "--router-https",
            f"127.0.0.1:{https}",
            "--data-dir",
            str(data),
            env=self.env(),
        )

    def start_node(self, engine: Engine) -> Proc:
        data = self.h.tmp / f"node-{engine.node}"
        proc = self.h.start(
            "node",
            self.etcd,
            *self.extra,
            "--name",
            engine.node,
            "--data-dir",
            str(data),
            env={**self.env(), "LB_DOCKER_HOST": engine.url},
        )
        self.nodes[engine.node] = proc
        return proc

    async def start(self) -> None:
        """Every process, ready; then the app: ``web`` of ``shop``, :data:`REPLICAS` containers
        answering through both routers."""
        self.router_ports = free_ports(2)
        self.routers = [self.start_router(0), self.start_router(1)]
        self.apis = [self.start_api(), self.start_api()]
        self.controllers = [self.start_controller(), self.start_controller()]
        for engine in self.engines:
            self.start_node(engine)
        for proc in [*self.apis, *self.controllers, *self.nodes.values(), *self.routers]:
            await self.h.ready(proc, within=60)
        api = self.apis[0]
        await self.h.call(api, "POST", "/api/projects", {"name": PROJECT}, expect=201)
        body = {
            "name": SERVICE,
            "config": {
                "image": "lastbackend-test/busybox:1",
                "replicas": REPLICAS,
                "memory": 32,
                "command": SERVE_ID,
                "ports": {"8080/TCP": 0},
            },
        }
        path = f"/api/projects/{PROJECT}/services"
        _, service = await self.h.call(api, "POST", path, body, expect=201)
        self.sid = str(service["id"])
        await self.converge(90)

    def api(self) -> Proc:
        """An API process that is alive."""
        return next(p for p in self.apis if p.alive)

    async def leader(self, name: str) -> str:
        """Who holds the election ``name`` (``services``, ``staging``...): ``GET /api/leaders``."""
        _, body = await self.h.call(self.api(), "GET", "/api/leaders", expect=200, record=False)
        return next((i["leader"] for i in body["resources"] if i["name"] == name), "")

    async def leading(self, name: str, not_pid: int = 0) -> Proc | None:
        """The live controller process leading ``name`` (its identity is ``host/pid/nonce``),
        other than ``not_pid``; None while there is none."""
        holder = await self.leader(name)
        for proc in self.controllers:
            if proc.alive and proc.pid != not_pid and f"/{proc.pid}/" in holder:
                return proc
        return None

    async def service(self) -> dict[str, Any]:
        path = f"/api/projects/{PROJECT}/services/{SERVICE}"
        _, body = await self.h.call(self.api(), "GET", path, expect=200, record=False)
        return dict(body)

    async def rollout(self) -> dict[str, Any]:
        return dict((await self.service())["status"]["rollout"] or {})

    async def rollout_is(self, state: str, revision: int) -> bool:
        found = await self.rollout()
        return (found.get("state"), found.get("revision")) == (state, revision)

    async def reported(self) -> list[dict[str, Any]]:
        """The containers API: what the node agents report for the app."""
        path = f"/api/projects/{PROJECT}/services/{SERVICE}/containers?per_page=100"
        _, body = await self.h.call(self.api(), "GET", path, expect=200, record=False)
        return list(body["resources"])

    async def patch(self, changes: dict[str, Any]) -> None:
        path = f"/api/projects/{PROJECT}/services/{SERVICE}/config"
        await self.h.call(self.api(), "PATCH", path, changes, expect=200)

    # what Docker shows

    def containers(self) -> list[dict[str, Any]]:
        """Running containers of the app, on both engines, each with ``engine`` (its node)."""
        found = []
        for engine in self.engines:
            selector = {"label": [f"{LABEL_SERVICE}={self.sid}", f"{LABEL_NODE}={engine.node}"]}
            for c in engine.api.containers(filters=selector):
                found.append({**c, "engine": engine.node})
        return found

    def twice(self) -> list[str]:
        """Pods with more than one running container across both engines."""
        counts = Counter(c["Labels"][LABEL_POD] for c in self.containers())
        return sorted(pod for pod, n in counts.items() if n > 1)

    async def converge(
        self, within: float, replicas: int = REPLICAS, since: float | None = None
    ) -> float:
        """Seconds from ``since`` (a ``time.monotonic()``; default now) until exactly
        ``replicas`` containers run, no pod twice, each answering through every live router."""
        started = time.monotonic() if since is None else since
        last = [""]  # what the last probe found wrong

        async def probe() -> bool:
            running = self.containers()
            if len(running) != replicas or self.twice():
                last[0] = f"{len(running)} running, twice: {self.twice()}"
                return False
            wanted = {c["Id"][:12] for c in running}
            for port, router in zip(self.router_ports, self.routers, strict=True):
                if router.alive and (seen := await answered_by(port)) != wanted:
                    last[0] = f"router :{port} answered from {sorted(seen)}, not {sorted(wanted)}"
                    return False
            return True

        def explain() -> str:
            return f"last probe: {last[0]}\n{self.explain()}"

        await eventually(probe, within, f"{replicas} containers answering", explain=explain)
        return time.monotonic() - started

    def explain(self) -> str:
        lines = [
            f"{c['engine']} {c['Id'][:12]} {c['Labels'].get(LABEL_POD)}" for c in self.containers()
        ]
        for proc in self.h.procs:
            lines.append(f"--- {proc.log.name} alive={proc.alive}\n{proc.tail(1500)}")
        return "\n".join(lines)

    def cleanup(self) -> None:
        self.h.cleanup()
        for engine in self.engines:
            for c in engine.api.containers(
                all=True, filters={"label": [f"{LABEL_NODE}={engine.node}"]}
            ):
                with contextlib.suppress(docker.errors.APIError):
                    engine.api.remove_container(c["Id"], force=True)


async def get_id(http: aiohttp.ClientSession, port: int) -> str | None:
    """The body of ``/id`` of the app through the router on ``port``, None on a failure."""
    try:
        async with http.get(f"http://127.0.0.1:{port}/id", headers={"Host": HOST}) as resp:
            text = (await resp.text()).strip()
            return text if resp.status == 200 else None
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None


async def answered_by(port: int, tries: int = 12) -> set[str]:
    """The container hostnames that answered ``tries`` requests through one router."""
    seen: set[str] = set()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
        for _ in range(tries):
            if (body := await get_id(http, port)) is not None:
                seen.add(body)
    return seen


@dataclass
class RouterLoad:
    """Requests through the routers at ``ports``, ``rate`` a second, while the block runs."""

    ports: list[int]
    rate: float = 50.0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RouterLoad:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _run(self) -> None:
        ports = itertools.cycle(range(len(self.ports)))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while not self._stop.is_set():
                first = next(ports)
                self.sent += 1
                if await get_id(http, self.ports[first]) is None:
                    self.retried += 1  # the client's other A record
                    other = self.ports[(first + 1) % len(self.ports)]
                    if await get_id(http, other) is None:
                        self.failed += 1
                        self.failures.append(f"{time.strftime('%H:%M:%S')} via {self.ports[first]}")
                await asyncio.sleep(1 / self.rate)

    @property
    def answered(self) -> float:
        return 1.0 if self.sent == 0 else (self.sent - self.failed) / self.sent

    def figure(self) -> str:
        return (
            f"{self.sent - self.failed}/{self.sent} answered ({100 * self.answered:.3f}%), "
            f"{self.retried} retried on the other router"
        )


@dataclass
class Entry:
    """What the ledger knows of one project name: its last acknowledged state and whether an
    unacknowledged write came after it (which may or may not have happened)."""

    state: str | None = None  # the acknowledged description, None when absent
    doubt: set[str | None] = field(default_factory=set)


class Writer:
    """Project writes through both API processes, one at a time, into a ledger."""

    def __init__(self, cluster: Cluster, prefix: str) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.ledger: dict[str, Entry] = {}
        self.acknowledged = 0
        self.unacknowledged = 0
        self.failovers = 0
        self.created: list[str] = []  # names whose create was acknowledged
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Writer:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _send(self, method: str, path: str, body: Any) -> tuple[int | None, bool]:
        """The status of the first answer that is not a 5xx, trying each live API once (None
        when none gave one), and whether an earlier try failed without a clear answer (it may
        have been done: a kill between the commit and the answer)."""
        apis = [p for p in self.cluster.apis if p.alive] or self.cluster.apis
        start = self.acknowledged + self.unacknowledged
        order = apis[start % len(apis) :] + apis[: start % len(apis)]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for attempt, proc in enumerate(order):
                if attempt:
                    self.failovers += 1
                try:
                    async with http.request(method, proc.url + path, json=body) as resp:
                        await resp.read()
                        if resp.status < 500:
                            return resp.status, attempt > 0
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass
        return None, True

    async def write(self, name: str, op: str) -> None:
        entry = self.ledger.setdefault(name, Entry())
        if op == "create":
            want: str | None = "v0"
            body = {"name": name, "description": want}
            status, unsure = await self._send("POST", "/api/projects", body)
            # a 409 on a name only we write: an earlier try of ours was done after all
            ok = status == 201 or (status == 409 and (unsure or bool(entry.doubt)))
        elif op == "update":
            want = f"v{len(self.ledger) + self.acknowledged}"
            status, unsure = await self._send(
                "PATCH", f"/api/projects/{name}", {"description": want}
            )
            ok = status == 200
        else:
            want = None
            status, unsure = await self._send("DELETE", f"/api/projects/{name}", None)
            ok = status == 204 or (status == 404 and (unsure or bool(entry.doubt)))
        if ok:
            self.acknowledged += 1
            if op == "create":
                self.created.append(name)
            entry.state, entry.doubt = want, set()
        elif status is None or (status >= 400 and (unsure or entry.doubt)):
            self.unacknowledged += 1
            entry.doubt.add(want)
        else:
            raise AssertionError(f"{op} {name}: {status}, ledger says {entry}")

    async def _run(self) -> None:
        for i in itertools.count():
            if self._stop.is_set():
                return
            name = f"{self.prefix}-{i}"
            await self.write(name, "create")
            if i % 2 == 0:
                await self.write(name, "update")
            if i % 3 == 0:
                await self.write(f"{self.prefix}-{i // 2}", "delete")
            await asyncio.sleep(0.02)

    async def verify(self, etcd: RawEtcd) -> None:
        """Every acknowledged write is in the tree exactly once, and what was not acknowledged
        is there whole or not at all."""
        problems = await self.problems(etcd)
        assert not problems, "\n".join(problems[:20])

    async def problems(self, etcd: RawEtcd) -> list[str]:
        """What :meth:`verify` finds wrong, one line each."""
        names = await _helper_names(etcd)
        metas = await _project_metas(etcd)
        by_name = Counter(meta["name"] for meta in metas.values())
        problems = []
        for pid, meta in metas.items():  # nothing half there: the index and the object agree
            if names.get(meta["name"]) != pid:
                problems.append(f"project {pid} {meta['name']} without its name index")
        for name, pid in names.items():
            if pid not in metas:
                problems.append(f"name {name} -> {pid}, no such project")
        for name, entry in self.ledger.items():
            present = {meta.get("description") for meta in metas.values() if meta["name"] == name}
            if by_name[name] > 1:
                problems.append(f"{name} is there {by_name[name]} times")
            found = present.pop() if present else None
            if found != entry.state and found not in entry.doubt:
                problems.append(f"{name}: {found!r}, acknowledged {entry.state!r} ({entry.doubt})")
        return problems

    def figure(self) -> str:
        return (
            f"{self.acknowledged} writes acknowledged, {self.unacknowledged} not, "
            f"{self.failovers} failed over to the other API"
        )


async def _helper_names(etcd: RawEtcd) -> dict[str, str]:
    found = await etcd.range(keys.HELPER_PROJECTS)
    named = {kv.key.removeprefix(keys.HELPER_PROJECTS): kv.value.decode() for kv in found.kvs}
    return {name: pid for name, pid in named.items() if "/" not in name}  # not service names


async def _project_metas(etcd: RawEtcd) -> dict[str, dict[str, Any]]:
    found = await etcd.range(keys.PROJECTS)
    metas = {}
    for kv in found.kvs:
        rest = kv.key.removeprefix(keys.PROJECTS)
        pid, _, leaf = rest.partition("/")
        if leaf == "meta":
            metas[pid] = json.loads(kv.value)
    return metas


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """The seconds the block took, in the one-item list it yields."""
    box = [0.0]
    started = time.monotonic()
    try:
        yield box
    finally:
        box[0] = time.monotonic() - started


def log_dir(h: Harness) -> Path:
    return h.tmp


class Reader:
    """``GET /api/projects`` through both API processes, one at a time, failing over."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.sent = 0
        self.failed = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Reader:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            while not self._stop.is_set():
                self.sent += 1
                apis = self.cluster.apis[self.sent % 2 :] + self.cluster.apis[: self.sent % 2]
                for proc in apis:
                    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                        async with http.get(proc.url + "/api/projects?per_page=20") as resp:
                            await resp.read()
                            if resp.status == 200:
                                break
                else:
                    self.failed += 1
                await asyncio.sleep(0.05)


class Stream:
    """An SSE client of ``/api/events?prefix=projects/`` that reconnects to the other API
    process with ``Last-Event-ID`` when its stream ends, as EventSource does: the events it
    saw, and how many came twice or out of revision order."""

    def __init__(self, cluster: Cluster, first: int) -> None:
        self.cluster = cluster
        self.index = first
        self.last_id = ""
        self.events = 0
        self.repeated = 0
        self.disordered = 0
        self.reconnects = 0
        self.relists = 0
        self._seen: set[tuple[int, str]] = set()
        self.created: set[str] = set()  # project names it saw created (their meta key)
        self._revision = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Stream:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                proc = self.cluster.apis[self.index % len(self.cluster.apis)]
                headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
                url = proc.url + "/api/events?prefix=projects/&heartbeat=1"
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with http.get(url, headers=headers) as resp:
                        if resp.status == 200:
                            await self._read(resp)
                self.reconnects += 1
                self.index += 1
                await asyncio.sleep(0.2)

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        event_id, kind, data = "", "", ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and kind:
                self._event(event_id, kind, data)
                event_id, kind, data = "", "", ""

    def missed(self, writer: Writer) -> list[str]:
        """The writer's acknowledged creates this stream never saw created."""
        return [name for name in writer.created if name not in self.created]

    def _event(self, event_id: str, kind: str, data: str) -> None:
        if event_id:
            self.last_id = event_id
        if kind == "relist":
            self.relists += 1
            return
        if kind not in ("created", "updated", "deleted"):
            return
        body = json.loads(data)
        seen = (int(body["revision"]), str(body["key"]))
        self.events += 1
        obj = body.get("object")
        if kind == "created" and seen[1].endswith("/meta") and isinstance(obj, dict):
            self.created.add(str(obj.get("name")))
        if seen in self._seen:
            self.repeated += 1
        if seen[0] < self._revision:
            self.disordered += 1
        self._seen.add(seen)
        self._revision = max(self._revision, seen[0])
