"""An in-memory :class:`~lastbackend.node.runtime.base.Runtime` for unit tests of controller logic.

It keeps the seam's rules (adoption by name, label selection, idempotent deletes, events from the
moment of subscription, no restart policy) and Docker's observable habits (the events a kill or a
stop emits, a stopped container's ports being empty, a volume in use refusing removal), so a
controller tested against it behaves the same on Docker; ``tests/unit/test_runtime_fake.py`` and
``tests/e2e/test_runtime_docker.py`` check the two against the same expectations.

Everything is deterministic: ids are hashes of a counter, free host ports count up from
``FIRST_PORT``, and the clock advances one second per change. Tests steer it with
:meth:`FakeRuntime.kill`, :meth:`FakeRuntime.write_log`, :meth:`FakeRuntime.fail_pull`,
:meth:`FakeRuntime.require_auth` and the ``capacity`` attribute, and observe ``pulls``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta

import attrs

from lastbackend.model.registries import registry_host
from lastbackend.node.runtime.base import (
    ContainerNotFound,
    ContainerRuntimeError,
    ContainerSpec,
    ContainerState,
    ImageError,
    Labels,
    NodeCapacity,
    RegistryAuth,
    RuntimeEvent,
    has_labels,
    must_pull,
)

FIRST_PORT = 40000
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


@attrs.define
class _Container:
    spec: ContainerSpec
    state: ContainerState
    lines: list[bytes] = attrs.Factory(list)
    changed: asyncio.Event = attrs.Factory(asyncio.Event)

    def touch(self) -> None:
        """Wake log followers; a fresh event for the next wait."""
        self.changed.set()
        self.changed = asyncio.Event()


class FakeRuntime:
    """Containers, images and volumes in dictionaries; see the module docstring."""

    def __init__(self, *, images: Iterable[str] = (), capacity: NodeCapacity | None = None) -> None:
        self.capacity = capacity or NodeCapacity(
            memory_mb=4096, cpus=2, hostname="fake-node", docker_version="fake"
        )
        self.images: set[str] = set(images)
        self.pulls: list[tuple[str, RegistryAuth | None]] = []
        """Every pull attempted, with the credentials it was given, in order."""
        self.closed = False
        self._pull_failures: dict[str, str] = {}
        self._registry_auth: dict[str, RegistryAuth] = {}
        self._containers: dict[str, _Container] = {}
        self._volumes: dict[str, dict[str, str]] = {}
        self._subscribers: list[tuple[dict[str, str], asyncio.Queue[RuntimeEvent]]] = []
        self._ids = itertools.count(1)
        self._ports = itertools.count(FIRST_PORT)
        self._ticks = itertools.count(1)

    # -- steering
    def fail_pull(self, image: str, message: str = "manifest unknown") -> None:
        """Make every pull of ``image`` fail with ``message``."""
        self._pull_failures[image] = message

    def require_auth(self, auth: RegistryAuth) -> None:
        """Make pulls from ``auth.server`` fail unless given exactly these credentials."""
        self._registry_auth[auth.server] = auth

    def kill(self, id_or_name: str, exit_code: int = 137, *, oom: bool = False) -> None:
        """The container's process dies, as ``docker kill`` or the OOM killer would make it."""
        box = self._box(id_or_name)
        if box is None or not box.state.running:
            raise ContainerNotFound(f"no running container {id_or_name}")
        self._emit(box, "oom" if oom else "kill")
        self._exit(box, exit_code)

    def write_log(self, id_or_name: str, data: bytes) -> None:
        """Append to the container's output, as its process writing would."""
        box = self._box(id_or_name)
        if box is None:
            raise ContainerNotFound(f"no container {id_or_name}")
        box.lines.extend(data.splitlines(keepends=True))
        box.touch()

    # -- Runtime
    async def info(self) -> NodeCapacity:
        return self.capacity

    async def ensure_image(
        self, image: str, auth: RegistryAuth | None = None, *, always_pull: bool = False
    ) -> None:
        if not must_pull(image, present=image in self.images, always_pull=always_pull):
            return
        self.pulls.append((image, auth))
        if image in self._pull_failures:
            raise ImageError(f"pulling {image}: {self._pull_failures[image]}")
        required = self._registry_auth.get(registry_host(image))
        if required is not None and auth != required:
            raise ImageError(f"pulling {image}: unauthorized: authentication required")
        self.images.add(image)

    async def run(self, spec: ContainerSpec) -> ContainerState:
        box = self._box(spec.name)
        if box is None:
            if spec.image not in self.images:
                raise ImageError(f"running {spec.name}: image {spec.image} is not present")
            for volume in spec.volumes:
                self._volumes.setdefault(volume, dict(spec.labels))
            digest = hashlib.sha256(f"fake-container-{next(self._ids)}".encode()).hexdigest()
            state = ContainerState(
                id=digest,
                name=spec.name,
                image=spec.image,
                status="created",
                labels=dict(spec.labels),
                ports={},
                created=self._now(),
            )
            box = self._containers[digest] = _Container(spec, state)
            self._emit(box, "create")
        if box.state.status in ("created", "exited"):
            self._start(box)
        return box.state

    async def list(self, labels: Labels) -> list[ContainerState]:
        states = [b.state for b in self._containers.values() if has_labels(b.state.labels, labels)]
        return sorted(states, key=lambda s: (s.created, s.name))

    async def inspect(self, id_or_name: str) -> ContainerState | None:
        box = self._box(id_or_name)
        return None if box is None else box.state

    async def stop(self, id_or_name: str, timeout_s: float = 10) -> None:
        box = self._box(id_or_name)
        if box is None or not box.state.running:
            return
        self._emit(box, "kill")
        self._exit(box, 0)
        self._emit(box, "stop")

    async def remove(self, id_or_name: str) -> None:
        box = self._box(id_or_name)
        if box is None:
            return
        if box.state.running:
            self._emit(box, "kill")
            self._exit(box, 137)
        del self._containers[box.state.id]
        self._emit(box, "destroy")
        box.touch()

    async def remove_volume(self, name: str) -> None:
        users = [b.state.name for b in self._containers.values() if name in b.spec.volumes]
        if users:
            raise ContainerRuntimeError(f"removing volume {name}: volume is in use - {users}")
        self._volumes.pop(name, None)

    async def volumes(self, labels: Labels) -> list[str]:
        return sorted(name for name, have in self._volumes.items() if has_labels(have, labels))

    def events(self, labels: Labels) -> AsyncIterator[RuntimeEvent]:
        queue: asyncio.Queue[RuntimeEvent] = asyncio.Queue()
        subscriber = (dict(labels), queue)
        self._subscribers.append(subscriber)  # now, not at the first step: see Runtime.events
        return self._drain(subscriber)

    def logs(
        self, id_or_name: str, *, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[bytes]:
        return self._logs(id_or_name, follow, tail)

    async def close(self) -> None:
        self.closed = True

    # -- internals
    def _box(self, id_or_name: str) -> _Container | None:
        box = self._containers.get(id_or_name)
        if box is None:
            box = next((b for b in self._containers.values() if b.state.name == id_or_name), None)
        return box

    def _now(self) -> datetime:
        return EPOCH + timedelta(seconds=next(self._ticks))

    def _start(self, box: _Container) -> None:
        taken = {
            port
            for b in self._containers.values()
            if b.state.running
            for port in b.state.ports.values()
        }
        ports: dict[str, int] = {}
        for spec_port, host in box.spec.ports.items():
            if host in taken:
                raise ContainerRuntimeError(
                    f"running {box.spec.name}: Bind for 0.0.0.0:{host} failed: "
                    "port is already allocated"
                )
            while not host or host in taken:
                host = next(self._ports)
            ports[spec_port.upper()] = host
            taken.add(host)
        box.state = attrs.evolve(
            box.state, status="running", ports=ports, started_at=self._now(), exit_code=None
        )
        self._emit(box, "start")
        box.touch()

    def _exit(self, box: _Container, exit_code: int) -> None:
        box.state = attrs.evolve(box.state, status="exited", ports={}, exit_code=exit_code)
        self._emit(box, "die", exit_code)
        box.touch()

    def _emit(self, box: _Container, action: str, exit_code: int | None = None) -> None:
        event = RuntimeEvent(
            action=action,
            container_id=box.state.id,
            name=box.state.name,
            labels=dict(box.state.labels),
            time=self._now(),
            exit_code=exit_code,
        )
        for labels, queue in self._subscribers:
            if has_labels(event.labels, labels):
                queue.put_nowait(event)

    async def _drain(
        self, subscriber: tuple[dict[str, str], asyncio.Queue[RuntimeEvent]]
    ) -> AsyncIterator[RuntimeEvent]:
        try:
            while True:
                yield await subscriber[1].get()
        finally:
            self._subscribers.remove(subscriber)

    async def _logs(self, id_or_name: str, follow: bool, tail: int | None) -> AsyncIterator[bytes]:
        box = self._box(id_or_name)
        if box is None:
            raise ContainerNotFound(f"logs of {id_or_name}: no such container")
        sent = 0 if tail is None else max(len(box.lines) - tail, 0)
        while True:
            while sent < len(box.lines):
                sent += 1
                yield box.lines[sent - 1]
            if not follow or not box.state.running or self._box(box.state.id) is None:
                return
            await box.changed.wait()
