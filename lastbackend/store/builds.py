"""Builds of a service or an image: numbered keys under the target, each call one transaction.

A build lives at ``services/<sid>/builds/<n>`` or ``images/<iid>/builds/<n>`` (seed 001), ``n``
counting 1, 2, 3... per target. Numbers are allocated by reading every build key of the target at
one revision, taking the highest number *numerically* (etcd orders keys as strings, so ``10``
sorts before ``9`` and the last key is not the newest build) and creating ``n + 1`` in a txn that
compares that key absent and the target's ``meta`` and ``source`` present. Two concurrent creates
that read the same highest number race for the same key: one wins, the other re-reads and takes
the next, so numbers are distinct and consecutive, never reused while the target exists.

Statuses move forward only, as :data:`NEXT` allows::

    queued -> fetching -> building -> pushing -> success
       \\-----------\\-----------\\----------\\--> failed | canceled

The build controller writes every step (``advance`` checks the move); the API writes only
``canceled``, and only while the build has not finished (a finished build is a 409).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import attrs

from lastbackend import codec
from lastbackend.model.common import now
from lastbackend.model.platform import Build
from lastbackend.store import keys
from lastbackend.store.etcd import KV, Cmp, Etcd, Op
from lastbackend.store.objects import Conflict, Contention, NotFound, retries

QUEUED = "queued"
ACTIVE = frozenset({"fetching", "building", "pushing"})
"""Statuses of a build that a controller task is working on."""
FINAL = frozenset({"success", "failed", "canceled"})
"""Statuses after which nothing about the build changes (and its log grows no more)."""
NEXT: dict[str, frozenset[str]] = {
    "queued": frozenset({"fetching", "failed", "canceled"}),
    "fetching": frozenset({"building", "failed", "canceled"}),
    "building": frozenset({"pushing", "failed", "canceled"}),
    "pushing": frozenset({"success", "failed", "canceled"}),
}
"""The moves a build may make from each status that is not final."""
CANCELED_MESSAGE = "canceled by request"


class NoSource(Exception):
    """The target has no ``source``: there is nothing to clone."""


class InvalidTransition(ValueError):
    """A status change that :data:`NEXT` does not allow."""


@attrs.frozen
class Target:
    """What is built: a service of a project, or an image."""

    kind: Literal["service", "image"]
    id: str
    """The service id or the image id."""
    project: str = ""
    """The project id, for a service."""

    def __attrs_post_init__(self) -> None:
        if self.kind not in ("service", "image"):
            raise ValueError(f"a build target is a service or an image, not {self.kind!r}")
        if self.kind == "service" and not self.project:
            raise ValueError("a service target needs its project id")

    @property
    def prefix(self) -> str:
        """The target's ``builds/`` prefix (with its trailing slash)."""
        if self.kind == "service":
            return keys.builds(self.project, self.id)
        return keys.image_builds(self.id)

    def key(self, number: int) -> str:
        if self.kind == "service":
            return keys.build(self.project, self.id, number)
        return keys.image_build(self.id, number)

    @property
    def meta_key(self) -> str:
        if self.kind == "service":
            return keys.service_part(self.project, self.id, "meta")
        return keys.image_part(self.id, "meta")

    @property
    def source_key(self) -> str:
        if self.kind == "service":
            return keys.service_part(self.project, self.id, "source")
        return keys.image_part(self.id, "source")

    @property
    def work_key(self) -> str:
        """``service:<pid>:<sid>`` or ``image:<iid>``: how the controller names the target."""
        if self.kind == "service":
            return f"service:{self.project}:{self.id}"
        return f"image:{self.id}"

    @classmethod
    def from_work_key(cls, work_key: str) -> Target:
        kind, _, rest = work_key.partition(":")
        if kind == "service":
            project, _, sid = rest.partition(":")
            return cls("service", sid, project)
        return cls("image", rest)

    def log_name(self, number: int) -> str:
        """The build log's blob name: ``<target id>-<n>`` (ids are UUIDs, unique across kinds)."""
        return f"{self.id}-{number}"

    def describe(self, number: int) -> str:
        return f"build {number} of {self.kind} {self.id}"


def build_of(key: str) -> tuple[Target, int] | None:
    """The target and number of a build key, or ``None`` for any other key."""
    ref = keys.build_of(key)
    if ref is None:
        return None
    if ref.image:
        return Target("image", ref.image), ref.number
    return Target("service", ref.service, ref.project), ref.number


def work_key_of(key: str) -> str | None:
    """The controller's work key for a build key; ``None`` for every other key."""
    found = build_of(key)
    return found[0].work_key if found is not None else None


def highest(kvs: Iterable[KV]) -> int:
    """The highest build number among a target's keys, compared as numbers; 0 for none."""
    numbers = [int(leaf) for leaf in (keys.leaf(kv.key) for kv in kvs) if leaf.isdigit()]
    return max(numbers, default=0)


def advance(build: Build, status: str, **fields: str) -> Build:
    """``build`` moved to ``status`` (with ``message``, ``commit``... as given), if allowed."""
    if status not in NEXT.get(build.status, frozenset()):
        raise InvalidTransition(f"a build cannot go from {build.status} to {status}")
    return attrs.evolve(build, status=status, updated=now(), **fields)


@attrs.frozen
class StoredBuild:
    number: int
    build: Build
    kv: KV


class Builds:
    """The transactions on builds: create (numbering), read, list and cancel."""

    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd

    async def create(
        self,
        target: Target,
        *,
        commit: str = "",
        commit_message: str = "",
        committer: str = "",
    ) -> int:
        """A new ``queued`` build of ``target``; its number.

        Raises :class:`NotFound` when the target does not exist and :class:`NoSource` when it has
        no source, writing nothing in either case.
        """
        stored = await self.add(
            target, commit=commit, commit_message=commit_message, committer=committer
        )
        return stored.number

    async def add(
        self,
        target: Target,
        *,
        commit: str = "",
        commit_message: str = "",
        committer: str = "",
    ) -> StoredBuild:
        """:meth:`create`, answering the build as written (the controller may move it on at
        once, so a read after the create could already see ``fetching``)."""
        async for _ in retries():
            read = await self.etcd.txn(
                [],
                [
                    Op.get_prefix(target.prefix, keys_only=True),
                    Op.get(target.meta_key),
                    Op.get(target.source_key),
                ],
            )
            builds, meta, source = read.reads
            if not meta:
                raise NotFound(f"{target.kind} {target.id} not found")
            if not source:
                raise NoSource(
                    f"{target.kind} {target.id} has no source: set its source "
                    "(hub, owner, repo, branch) to build it"
                )
            number = highest(builds) + 1
            t = now()
            build = Build(
                status=QUEUED,
                created=t,
                updated=t,
                commit=commit,
                commit_message=commit_message,
                committer=committer,
            )
            key, raw = target.key(number), codec.dumps(build)
            result = await self.etcd.txn(
                [Cmp.absent(key), Cmp.present(target.meta_key), Cmp.present(target.source_key)],
                [Op.put(key, raw)],
            )
            if result.succeeded:
                return StoredBuild(number, build, KV(key, raw, result.revision, result.revision, 1))
        raise Contention(f"builds of {target.kind} {target.id} are being created too fast")

    async def get(self, target: Target, number: int) -> StoredBuild:
        kv = await self.etcd.get(target.key(number))
        if kv is None:
            raise NotFound(f"build {number} of {target.kind} {target.id} not found")
        return StoredBuild(number, codec.loads(kv.value, Build), kv)

    async def list(self, target: Target) -> tuple[list[StoredBuild], int]:
        """Every build of the target by number, and the revision they were read at."""
        found = await self.etcd.range(target.prefix)
        builds = [
            StoredBuild(int(keys.leaf(kv.key)), codec.loads(kv.value, Build), kv)
            for kv in found.kvs
            if keys.leaf(kv.key).isdigit()
        ]
        return sorted(builds, key=lambda b: b.number), found.revision

    async def cancel(self, target: Target, number: int) -> StoredBuild:
        """Move a queued or running build to ``canceled``; :class:`Conflict` once it finished.

        The controller sees the change and stops the build's task (clone, ``docker build`` or
        push), so nothing more of it is written.
        """
        async for _ in retries():
            current = await self.get(target, number)
            if current.build.status in FINAL:
                raise Conflict(
                    f"build {number} already finished ({current.build.status}); only a queued "
                    "or running build can be canceled"
                )
            canceled = advance(current.build, "canceled", message=CANCELED_MESSAGE)
            key = target.key(number)
            result = await self.etcd.txn(
                [Cmp.unchanged(current.kv, key)], [Op.put(key, codec.dumps(canceled))]
            )
            if result.succeeded:
                kv = KV(
                    key,
                    codec.dumps(canceled),
                    current.kv.create_revision,
                    result.revision,
                    current.kv.version + 1,
                )
                return StoredBuild(number, canceled, kv)
        raise Contention(f"build {number} of {target.kind} {target.id} is changing too fast")
