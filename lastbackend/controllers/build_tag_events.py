"""The ``events`` controller: every change of the build-tag tree as an AMQP 1.0 message (seed 003).

**What is sent.** One API call is one etcd transaction, so one revision. For every revision that
changes keys under ``repos/``, each object whose own key changed *and every ancestor of it* is
sent to its address (``repos/<r>``, ``.../branches/<b>``, ``.../tags/<t>``,
``.../artifacts/<a>``) as that revision left it, nested whole, in the JSON a GET of it returns.
An artifact PUT sends the artifact, and the updated tag, branch and repo; deleting a branch sends
``deleted`` for the branch and each of its tags and artifacts, and the updated repo. Objects whose
JSON the revision did not change are not sent. Messages leave in revision order; within a
revision, repo by repo in id order and in each repo deepest first (artifacts, tags, branches,
then the repo), by ids within a level. Each receiver sees its address's messages in that order.

**Message.** Body: the object's JSON as an AMQP string; for ``deleted``, the object as it was
just before (its last state), so a receiver knows what went. ``content_type``
``application/json``; ``to`` (address) and application property ``path``: the object's address;
``subject`` and property ``kind``: ``created``, ``updated`` or ``deleted``; property ``level``:
``repo``, ``branch``, ``tag`` or ``artifact``; property ``revision``: the etcd revision (an
integer; several messages share one when one call changed several objects); ``message_id``:
``<path>@<revision>``, unique per event.

**Why its own watch, not an informer's handlers.** An informer calls handlers key by key with the
cache already moved on, and a delete's revision is not among what it hands over, so a handler
cannot tell where one transaction ends: a tag PUT with three artifacts would be seen as four
partial states. :class:`RepoTree` applies a watch's events one whole revision at a time (etcd
never splits a revision across watch responses) to its own copy of the tree, so every message
shows a state etcd really had. Like an informer it lists first and watches from the list's
revision + 1; after a compaction it relists and sends the difference (``created``, ``updated``
and ``deleted`` as of the new list's revision).

**Leadership.** Only the leader lists, watches, listens and forwards (:mod:`.amqp`), so several
processes send one message per change. When a term ends the listener closes (receivers see
their connection drop) and the next leader opens its own on *its* configured address; a
receiver reconnects there.

**Nothing missed across a failover.** The leader keeps, in ``system/events/published`` (fenced:
only while it leads), the revision up to which it has published, written every
:data:`PUBLISHED_EVERY` seconds and one period behind, so what it had handed over but not yet
written to its sockets when it died is counted as not published. A new leader lists the tree *as
it was at that revision* and publishes every change after it: what was written while nobody led,
and what the old leader may not have got out. A receiver that resumes after the last revision it
saw (:mod:`.amqp`, Resuming) gets each message exactly once; one that attaches without a
revision gets the live messages only (not those catching up on revisions made before the term
began), and the forward broker gets both, so around a failover it may get a message twice (with
the same ``message_id``). If that history is compacted (etcd keeps 100,000 revisions), the
leader starts from the present and logs how many revisions were lost; receivers asking to resume
before it are refused and read the tree through the API. A paused ex-leader may send a change
its successor also sends, at most until its lease runs out.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import structlog

from lastbackend import codec
from lastbackend.controllers.amqp import AmqpHub, Outgoing
from lastbackend.controllers.runner import LeaderTask
from lastbackend.model import repos as model
from lastbackend.store import keys
from lastbackend.store.etcd import Compacted, Op, Store, StoreError, list_prefix
from lastbackend.store.repos import decode, objects

log = structlog.get_logger("lastbackend.controllers.build_tag_events")

Ids = tuple[str, ...]
CREATED, UPDATED, DELETED = "created", "updated", "deleted"
RETRY_MIN = 0.1
RETRY_MAX = 5.0
PUBLISHED_EVERY = 0.5
"""Seconds between writes of ``system/events/published``; each writes what was published a
period before."""


@attrs.frozen
class Change:
    """One object as one revision left it (for ``deleted``: as it was before)."""

    ids: Ids
    kind: str
    revision: int
    value: Any

    @property
    def address(self) -> str:
        return model.address(self.ids)

    def message(self) -> Outgoing:
        address = self.address
        return Outgoing(
            address=address,
            body=codec.dumps(self.value).decode(),
            subject=self.kind,
            message_id=f"{address}@{self.revision}",
            properties={
                "path": address,
                "kind": self.kind,
                "level": model.LEVELS[len(self.ids) - 1],
                "revision": self.revision,
            },
        )


def _order(ids: Ids) -> tuple[int, Ids]:
    return -len(ids), ids


class RepoTree:
    """The build-tag keys at one revision, grouped by repo, and the objects they make.

    Each repo's objects are rebuilt (``store.repos.objects``) when one of its keys changes, so a
    change costs time in proportion to its repo's size, not the whole tree's.
    """

    def __init__(self) -> None:
        self.revision = 0
        self._keys: dict[str, dict[str, bytes]] = {}
        self._built: dict[str, dict[Ids, Any]] = {}

    def __len__(self) -> int:
        return sum(len(pairs) for pairs in self._keys.values())

    def load(self, pairs: Iterable[tuple[str, bytes]], revision: int) -> list[Change]:
        """Replace the tree with a listing made at ``revision``; what differs from before."""
        listed: dict[str, dict[str, bytes]] = {}
        for key, raw in pairs:
            ids = keys.repo_ids(key)
            if ids is not None and _valid(ids, key, raw):
                listed.setdefault(ids[0], {})[key] = raw
        changes: list[Change] = []
        for repo in sorted(set(self._keys) | set(listed)):
            changes += self._replace(repo, listed.get(repo, {}), revision, None)
        self.revision = revision
        return changes

    def apply(self, revision: int, events: Iterable[tuple[str, bytes | None]]) -> list[Change]:
        """Apply one revision's ``(key, value or None for a delete)`` events; what they changed."""
        staged: dict[str, dict[str, bytes]] = {}
        touched: dict[str, set[Ids]] = {}
        for key, raw in events:
            ids = keys.repo_ids(key)
            if ids is None:
                continue  # not an object's key: no object changed
            repo = ids[0]
            pairs = staged.get(repo)
            if pairs is None:
                pairs = staged[repo] = dict(self._keys.get(repo, {}))
            if raw is None or not _valid(ids, key, raw):
                pairs.pop(key, None)
            else:
                pairs[key] = raw
            touched.setdefault(repo, set()).update(ids[:depth] for depth in range(1, len(ids) + 1))
        changes: list[Change] = []
        for repo in sorted(staged):
            changes += self._replace(repo, staged[repo], revision, touched[repo])
        self.revision = max(self.revision, revision)
        return changes

    def _replace(
        self, repo: str, pairs: dict[str, bytes], revision: int, only: set[Ids] | None
    ) -> list[Change]:
        before = self._built.get(repo, {})
        after = objects(pairs.items())
        if pairs:
            self._keys[repo], self._built[repo] = pairs, after
        else:
            self._keys.pop(repo, None)
            self._built.pop(repo, None)
        candidates = only if only is not None else before.keys() | after.keys()
        changes: list[Change] = []
        for ids in sorted(candidates, key=_order):
            old, new = before.get(ids), after.get(ids)
            if old == new:
                continue
            if new is None:
                changes.append(Change(ids, DELETED, revision, old))
            else:
                changes.append(Change(ids, CREATED if old is None else UPDATED, revision, new))
        return changes


def _valid(ids: Ids, key: str, raw: bytes) -> bool:
    """Whether a value decodes as its object; one that does not (written by hand) is left out,
    as a GET would fail on it rather than show it."""
    try:
        decode(ids, raw)
    except Exception as exc:
        log.warning("build-tag key does not decode; not sent", key=key, error=str(exc))
        return False
    return True


async def list_tree(etcd: Store, revision: int = 0) -> tuple[int, list[tuple[str, bytes]]]:
    """Every key under ``repos/`` at one revision (``revision``, or now)."""
    revision, kvs = await list_prefix(etcd, keys.REPOS, revision=revision)
    return revision, [(kv.key, kv.value) for kv in kvs]


async def resume_point(etcd: Store) -> tuple[int, list[tuple[str, bytes]], int, int]:
    """The tree to publish from: (revision, its keys, revisions lost to compaction, the revision
    ``system/events/published`` holds or 0).

    The tree as ``system/events/published`` says it was last published, so every change after
    it is sent again; the present when nothing was published yet, or when that history is gone.
    """
    kv = await etcd.get(keys.EVENTS_PUBLISHED)
    published = int(kv.value) if kv is not None and kv.value.isdigit() else 0
    if published:
        try:
            revision, pairs = await list_tree(etcd, published)
            return revision, pairs, 0, published
        except Compacted:
            pass
    revision, pairs = await list_tree(etcd)
    return revision, pairs, max(0, revision - published) if published else 0, published


async def follow(
    etcd: Store,
    tree: RepoTree,
    publish: Callable[[Sequence[Outgoing]], None],
    published: Callable[[int], None] = lambda revision: None,
) -> None:
    """Watch ``repos/`` from ``tree.revision`` + 1 and publish every revision's changes, forever.

    A broken stream is resumed by the store; a compaction relists and publishes the difference.
    ``published`` is told each revision up to which everything is published.
    """
    delay = RETRY_MIN
    relist = False
    while True:
        try:
            if relist:
                revision, pairs = await list_tree(etcd)
                changes = tree.load(pairs, revision)
                relist = False
                if changes:
                    publish([change.message() for change in changes])
            async for batch in etcd.watch_batches(
                keys.REPOS, start_revision=tree.revision + 1, prev_kv=False
            ):
                for revision, events in itertools.groupby(
                    batch.events, key=lambda e: e.kv.mod_revision
                ):
                    changes = tree.apply(
                        revision,
                        [(e.kv.key, None if e.kind == "delete" else e.kv.value) for e in events],
                    )
                    if changes:
                        publish([change.message() for change in changes])
                tree.revision = max(tree.revision, batch.revision)
                published(tree.revision)
                delay = RETRY_MIN
        except Compacted as exc:
            log.info("events watch compacted, relisting", revision=tree.revision, error=str(exc))
            relist = True
        except StoreError as exc:
            log.warning("events watch failed", error=str(exc), retry=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)


class EventsController(LeaderTask):
    """Leader-elected AMQP publisher of the build-tag tree (see the module docstring).

    ``listen`` is where receivers connect (``None``: nowhere, forwarding only); ``forward`` an
    AMQP 1.0 broker URL that gets the same messages at the same addresses (``None``: none).
    """

    name = "events"

    def __init__(self, listen: tuple[str, int] | None, forward: str | None = None) -> None:
        super().__init__()
        self.listen = listen
        self.forward = forward or None
        self.hub: AmqpHub | None = None
        """The current term's hub (``None`` between terms): for status and tests."""

    async def run(self) -> None:
        """List where the last leader stopped, then follow the tree a revision at a time."""
        etcd = self.store
        tree = RepoTree()
        now = await etcd.status()  # what happened up to here is catching up, not live
        revision, pairs, lost, recorded = await resume_point(etcd)
        tree.load(pairs, revision)  # the state of the last message sent: from here on, all
        if lost:
            log.warning(
                "the history since the last published revision is compacted: changes made in "
                "those revisions were not sent",
                revisions=lost,
                revision=revision,
            )
        hub = AmqpHub(
            self.listen, self.forward, name=self.name, complete_after=revision, live_after=now
        )
        progress = _Progress(self, revision, recorded)
        try:
            await hub.start()
            self.hub = hub
            log.info(
                "events publishing",
                revision=revision,
                keys=len(tree),
                listening=hub.listening,
                forward=self.forward is not None,
            )
            async with asyncio.TaskGroup() as group:
                group.create_task(hub.closed(), name="events-amqp")
                group.create_task(
                    follow(etcd, tree, hub.publish, progress.advance), name="events-watch"
                )
                group.create_task(progress.record(), name="events-published")
        finally:
            self.hub = None
            await hub.stop()


class _Progress:
    """Writes ``system/events/published`` one :data:`PUBLISHED_EVERY` behind what was published."""

    def __init__(self, controller: EventsController, revision: int, recorded: int) -> None:
        self.controller = controller
        self.latest = revision
        self.written = recorded

    def advance(self, revision: int) -> None:
        self.latest = max(self.latest, revision)

    async def record(self) -> None:
        """At once the revision the term starts from (a first term's successor must not start
        from the present), then every period what was published a period before."""
        due = self.latest
        while True:
            if due > self.written:
                try:
                    await self.controller.txn([], [Op.put(keys.EVENTS_PUBLISHED, str(due))])
                    self.written = due
                except StoreError as exc:  # etcd away: the next tick tries again
                    log.warning("recording the published revision failed", error=str(exc))
            due = self.latest
            await asyncio.sleep(PUBLISHED_EVERY)
