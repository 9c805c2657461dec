"""The etcd client seam: the only module that imports the etcd library.

Repositories speak in :class:`KV`, :class:`Op` and :class:`Cmp` values and one call,
:meth:`Etcd.txn`, so every API call maps to exactly one etcd transaction and tests can read what
was written with the same small vocabulary. One :class:`Etcd` (one gRPC channel) lives per process.

Reads are linearizable (etcd's default). A read can be pinned to a revision so that a list made
of several round trips still describes one moment of the tree.

Leases and watches, for the controllers (DESIGN.md section 6):

- :meth:`Etcd.grant` returns a :class:`Lease`. Its keep-alive is one background task that renews
  every TTL/3 and knows a *deadline*: the send time of the last renewal that etcd answered plus
  the TTL it granted. The server's expiry is never earlier than that (it starts counting when it
  handles the renewal, after we sent it), so when the deadline passes without a renewal the lease
  may be gone and :attr:`Lease.lost` is set. A leader steps down on that event, never later than
  etcd could hand its key to someone else.
- :meth:`Etcd.watch_batches` runs its own reconnect loop instead of etcd3aio's. etcd3aio resumes a
  broken stream from the last response's ``header.revision + 1``, but the header of a watch's
  "created" response (and of a catch-up batch cut short by the server) is the *current* store
  revision, not the last event delivered, so a stream that breaks between those responses and the
  events they announce would skip events. Here the resume point is the last event's revision + 1,
  or a progress notification's revision + 1 (etcd sends those only to watchers that are caught up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import attrs
import grpc
from etcd3aio import Etcd3Client, EtcdError
from etcd3aio._protobuf import (
    Compare,
    DeleteRangeRequest,
    LeaseKeepAliveRequest,
    LeaseStub,
    PutRequest,
    RangeRequest,
    RequestOp,
    WatchCreateRequest,
    WatchRequest,
    WatchStub,
)

from lastbackend.store.keys import prefix_end
from lastbackend.store.loop_thread import LoopThread

_log = logging.getLogger(__name__)

# etcd's default --max-txn-ops; a transaction with more operations is refused by the server.
MAX_TXN_OPS = 128

_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # gRPC refuses responses over 4 MB by default; a watch catching up over many revisions (etcd
    # batches up to 1000 of them) can exceed that, and would then fail again on every retry.
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
]

# Watch streams are re-opened after a transient failure with this backoff (seconds).
WATCH_RETRY_MIN = 0.05
WATCH_RETRY_MAX = 2.0

# A watch must be answered by a member that sees a leader: a member cut off from the cluster
# would otherwise keep the stream open and silently deliver nothing.
_WATCH_METADATA = (("hasleader", "true"),)

# Status codes after which a watch gives up (any other failure re-opens it, with backoff).
_WATCH_FATAL = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


class StoreError(Exception):
    """Base class of the store's errors."""


class StoreUnavailable(StoreError):
    """etcd could not be reached or did not answer in time; nothing is known to be written."""


class Compacted(StoreError):
    """A revision that etcd has already compacted away was asked for."""

    def __init__(self, revision: int, compact_revision: int) -> None:
        super().__init__(f"revision {revision} is compacted (oldest is {compact_revision})")
        self.revision = revision
        self.compact_revision = compact_revision


@attrs.frozen
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


@attrs.frozen
class Op:
    """One operation inside a transaction."""

    kind: str  # "put" | "delete" | "get"
    key: str
    value: bytes = b""
    range_end: bytes = b""
    revision: int = 0
    lease: int = 0
    keys_only: bool = False

    @classmethod
    def put(cls, key: str, value: bytes | str, *, lease: int = 0) -> Op:
        return cls("put", key, value.encode() if isinstance(value, str) else value, lease=lease)

    @classmethod
    def delete(cls, key: str) -> Op:
        return cls("delete", key)

    @classmethod
    def delete_prefix(cls, prefix: str) -> Op:
        if not prefix.endswith("/"):
            raise ValueError(f"prefix deletes need a trailing slash, got {prefix!r}")
        return cls("delete", prefix, range_end=prefix_end(prefix))

    @classmethod
    def get(cls, key: str, *, revision: int = 0) -> Op:
        return cls("get", key, revision=revision)

    @classmethod
    def get_prefix(cls, prefix: str, *, revision: int = 0, keys_only: bool = False) -> Op:
        return cls(
            "get", prefix, range_end=prefix_end(prefix), revision=revision, keys_only=keys_only
        )

    def to_proto(self) -> RequestOp:
        key = self.key.encode()
        end = self.range_end
        if self.kind == "put":
            return RequestOp(request_put=PutRequest(key=key, value=self.value, lease=self.lease))
        if self.kind == "delete":
            return RequestOp(request_delete_range=DeleteRangeRequest(key=key, range_end=end))
        return RequestOp(
            request_range=RangeRequest(
                key=key, range_end=end, revision=self.revision, keys_only=self.keys_only
            )
        )


@attrs.frozen
class Cmp:
    """One comparison guarding a transaction."""

    key: str
    target: str  # "create" | "mod" | "value"
    op: str  # "==" | "<" | ">" | "!="
    revision: int = 0
    value: bytes = b""
    range_end: bytes = b""  # set: the comparison holds for every key in [key, range_end)

    @classmethod
    def absent(cls, key: str) -> Cmp:
        """The key does not exist (its create revision is 0)."""
        return cls(key, "create", "==", 0)

    @classmethod
    def present(cls, key: str) -> Cmp:
        return cls(key, "create", ">", 0)

    @classmethod
    def unchanged(cls, kv: KV | None, key: str) -> Cmp:
        """The key is as it was read: same mod revision, or still absent."""
        return cls(key, "mod", "==", kv.mod_revision) if kv else cls.absent(key)

    @classmethod
    def nothing_created_after(cls, prefix: str, revision: int) -> Cmp:
        """No key under ``prefix`` was created after ``revision`` (etcd >= 3.3 range compare)."""
        return cls(prefix, "create", "<", revision + 1, range_end=prefix_end(prefix))

    @classmethod
    def value_is(cls, key: str, value: bytes | str) -> Cmp:
        return cls(key, "value", "==", value=value.encode() if isinstance(value, str) else value)

    @classmethod
    def created_at(cls, key: str, revision: int) -> Cmp:
        """The key exists and is the one created at ``revision``: not deleted and re-made since.

        A fencing token: an election key is created afresh for every term, so its create revision
        names the term, and a write guarded by it fails once the term is over.
        """
        if revision <= 0:
            raise ValueError("a fencing create revision is positive")
        return cls(key, "create", "==", revision)

    def to_proto(self) -> Compare:
        result = {
            "==": Compare.EQUAL,
            "!=": Compare.NOT_EQUAL,
            "<": Compare.LESS,
            ">": Compare.GREATER,
        }[self.op]
        key = self.key.encode()
        if self.target == "create":
            return Compare(
                result=result,
                target=Compare.CREATE,
                key=key,
                create_revision=self.revision,
                range_end=self.range_end,
            )
        if self.target == "mod":
            return Compare(result=result, target=Compare.MOD, key=key, mod_revision=self.revision)
        return Compare(result=result, target=Compare.VALUE, key=key, value=self.value)


@attrs.frozen
class TxnResult:
    succeeded: bool
    revision: int
    # For each "get" op of the branch that ran, in order: the KVs it read.
    reads: list[list[KV]]


@attrs.frozen
class Range:
    kvs: list[KV]
    revision: int
    count: int
    more: bool


@attrs.frozen
class WatchEvent:
    kind: str  # "put" | "delete"
    kv: KV
    prev: KV | None


@attrs.frozen
class WatchBatch:
    """One watch response: its events, and how far the watch has certainly got.

    Every change under the watched range with a revision up to ``revision`` has been delivered
    (in this batch or an earlier one). A progress notification is a batch with no events.
    """

    events: list[WatchEvent]
    revision: int


# A list of 500,000 keys builds 500,000 KVs: a frozen attrs __init__ (1.3 us) was a quarter of
# the list's CPU. Setting the slots through their descriptors is the same object for 0.5 us.
_KV_FIELDS = ("key", "value", "create_revision", "mod_revision", "version")
assert tuple(a.name for a in attrs.fields(KV)) == _KV_FIELDS, "keep _kv in step with KV"
_set_key, _set_value, _set_created, _set_modified, _set_version = (
    getattr(KV, name).__set__ for name in _KV_FIELDS
)


def _kv(raw: Any) -> KV:
    kv = object.__new__(KV)
    _set_key(kv, raw.key.decode())
    _set_value(kv, bytes(raw.value))
    _set_created(kv, raw.create_revision)
    _set_modified(kv, raw.mod_revision)
    _set_version(kv, raw.version)
    return kv


@attrs.frozen
class TLS:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


class Etcd:
    """One long-lived etcd client for the process."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        tls: TLS | None = None,
        timeout: float = 5.0,
        watch_thread: bool = True,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        tls = tls or TLS()
        conn: dict[str, bytes | None] = {}
        if tls.ca:
            conn["ca_cert"] = tls.ca.read_bytes()
            conn["cert_chain"] = tls.cert.read_bytes() if tls.cert else None
            conn["cert_key"] = tls.key.read_bytes() if tls.key else None
        server_name = None
        if tls.ca and len(self.endpoints) > 1:
            server_name = self.endpoints[0].rsplit(":", 1)[0]
        self._new_client = lambda: _client(self.endpoints, server_name, conn)
        self._client = self._new_client()
        self._watch_thread = LoopThread("etcd-watch") if watch_thread else None
        """Where watches are read (see :meth:`watch_batches`); ``None``: on the caller's loop."""
        self._watch_client: Etcd3Client | None = None
        self._watch_stub: Any = None
        self._lease_stub: Any = None
        self._connected = False

    async def connect(self) -> None:
        if not self._connected:
            await self._client.connect()
            # Our own keep-alive loop (see the module docstring) uses a stub on the same channel,
            # and so do the watches, unless they are read on a thread with a channel of its own.
            self._lease_stub = LeaseStub(self._client._channel)
            if self._watch_thread is None:
                self._watch_stub = WatchStub(self._client._channel)
            else:
                self._watch_thread.start()
                self._watch_stub = await self._watch_thread.call(self._connect_watch_client())
            self._connected = True

    async def _connect_watch_client(self) -> Any:
        """On the watch thread: its own channel (a gRPC channel belongs to one event loop)."""
        client = self._new_client()
        await client.connect()
        self._watch_client = client
        return WatchStub(client._channel)

    async def close(self) -> None:
        if self._connected:
            self._watch_stub = None  # first: a watch between retries stops instead of reopening
            await self._client.close()
            if self._watch_thread is not None:
                if self._watch_client is not None:
                    with contextlib.suppress(Exception):  # closing: a broken channel is fine
                        await self._watch_thread.call(self._watch_client.close())
                    self._watch_client = None
                self._watch_thread.stop()
            self._watch_stub = None
            self._lease_stub = None
            self._connected = False

    async def __aenter__(self) -> Etcd:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def _kv(self) -> Any:
        if self._client.kv is None:
            raise StoreUnavailable("etcd client is not connected")
        return self._client.kv

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (EtcdError, TimeoutError) as exc:
            raise StoreUnavailable(f"etcd unavailable: {exc}") from exc
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                raise Compacted(0, 0) from exc
            raise StoreUnavailable(f"etcd error: {exc.code().name}: {exc.details()}") from exc

    async def get(self, key: str, *, revision: int = 0) -> KV | None:
        resp = await self._call(self._kv.get(key, revision=revision, timeout=self.timeout))
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def range(
        self,
        prefix: str,
        *,
        start: str | None = None,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        end: str | None = None,
    ) -> Range:
        """Keys under ``prefix`` (from ``start`` on, before ``end``, if given), in key order."""
        resp = await self._call(
            self._kv.get(
                start or prefix,
                end or prefix_end(prefix),
                revision=revision,
                limit=limit,
                keys_only=keys_only,
                count_only=count_only,
                timeout=self.timeout,
            )
        )
        return Range(
            kvs=[_kv(kv) for kv in resp.kvs],
            revision=resp.header.revision,
            count=resp.count,
            more=resp.more,
        )

    async def marks(self, prefix: str, *, start: str, revision: int, every: int) -> list[str]:
        """Every ``every``-th key under ``prefix`` from ``start`` on, at ``revision``: the
        first keys of pages of ``every`` keys (see :func:`list_prefix`).

        One keys-only read; only the keys returned are decoded, not a :class:`KV` per key.
        """
        resp = await self._call(
            self._kv.get(
                start,
                prefix_end(prefix),
                revision=revision,
                keys_only=True,
                timeout=self.timeout,
            )
        )
        kvs = resp.kvs
        return [kvs[i].key.decode() for i in range(0, len(kvs), every)]

    async def pairs(self, prefix: str) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Every (key, value) under ``prefix`` as raw bytes, and the revision read at.

        For large indexes: building a :class:`KV` per entry costs more than the read itself.
        """
        resp = await self._call(self._kv.get(prefix, prefix_end(prefix), timeout=self.timeout))
        return int(resp.header.revision), [(kv.key, kv.value) for kv in resp.kvs]

    async def txn(
        self, compare: Sequence[Cmp], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        if len(success) > MAX_TXN_OPS or len(failure) > MAX_TXN_OPS:
            raise ValueError(f"a transaction holds at most {MAX_TXN_OPS} operations")
        resp = await self._call(
            self._kv.txn(
                [c.to_proto() for c in compare],
                [o.to_proto() for o in success],
                [o.to_proto() for o in failure],
                timeout=self.timeout,
            )
        )
        reads = [
            [_kv(kv) for kv in r.response_range.kvs]
            for r in resp.responses
            if r.WhichOneof("response") == "response_range"
        ]
        return TxnResult(succeeded=resp.succeeded, revision=resp.header.revision, reads=reads)

    async def read_many(self, keys: Sequence[str], *, revision: int = 0) -> dict[str, KV]:
        """Several single keys read at one revision, in as few round trips as etcd allows."""
        found: dict[str, KV] = {}
        chunks = [keys[i : i + MAX_TXN_OPS] for i in range(0, len(keys), MAX_TXN_OPS)]
        results = await asyncio.gather(
            *(self.txn([], [Op.get(k, revision=revision) for k in chunk]) for chunk in chunks)
        )
        for result in results:
            for read in result.reads:
                for kv in read:
                    found[kv.key] = kv
        return found

    async def status(self) -> int:
        """The current revision; raises :class:`StoreUnavailable` if etcd does not answer."""
        resp = await self._call(self._kv.get("/lastbackend", count_only=True, timeout=self.timeout))
        return int(resp.header.revision)

    # leases ------------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> Lease:
        """A new lease of ``ttl`` seconds (etcd may round it up), not yet kept alive.

        Call :meth:`Lease.keep_alive` (or use it as ``async with``) to renew it in the background.
        """
        if self._client.lease is None:
            raise StoreUnavailable("etcd client is not connected")
        sent = time.monotonic()
        resp = await self._call(self._client.lease.grant(ttl, timeout=self.timeout))
        if resp.error:
            raise StoreError(f"lease grant refused: {resp.error}")
        return Lease(self, int(resp.ID), int(resp.TTL), sent + int(resp.TTL))

    async def revoke(self, lease_id: int) -> bool:
        """Revoke a lease and delete every key attached to it; False if it was already gone."""
        if self._client.lease is None:
            raise StoreUnavailable("etcd client is not connected")
        try:
            await self._client.lease.revoke(lease_id, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise StoreUnavailable(f"etcd error: {exc.code().name}: {exc.details()}") from exc
        except (EtcdError, TimeoutError) as exc:
            raise StoreUnavailable(f"etcd unavailable: {exc}") from exc
        return True

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds the lease has left on the server; -1 if it has expired or never existed."""
        if self._client.lease is None:
            raise StoreUnavailable("etcd client is not connected")
        resp = await self._call(self._client.lease.time_to_live(lease_id, timeout=self.timeout))
        return int(resp.TTL)

    async def keep_alive_once(self, lease_id: int) -> int:
        """Renew a lease once; the TTL etcd granted, 0 if the lease no longer exists."""
        if self._lease_stub is None:
            raise StoreUnavailable("etcd client is not connected")
        # A plain list, not an async generator: gRPC stops reading the requests when the call
        # fails, and a generator left suspended would be finalized after its loop is gone.
        call = self._lease_stub.LeaseKeepAlive([LeaseKeepAliveRequest(ID=lease_id)])
        try:
            async with asyncio.timeout(self.timeout):
                async for resp in call:
                    return int(resp.TTL)
        except grpc.aio.AioRpcError as exc:
            raise StoreUnavailable(f"lease keep-alive failed: {exc.code().name}") from exc
        except TimeoutError as exc:
            raise StoreUnavailable("lease keep-alive timed out") from exc
        finally:
            call.cancel()
        raise StoreUnavailable("lease keep-alive stream closed without an answer")

    # watches -----------------------------------------------------------------------------------

    async def watch_batches(
        self,
        key: str,
        *,
        start_revision: int,
        prefix: bool = True,
        prev_kv: bool = True,
        progress_notify: bool = False,
    ) -> AsyncIterator[WatchBatch]:
        """Every change of ``key`` (every key under it, if ``prefix``) from ``start_revision`` on.

        A broken stream is re-opened from the revision after the last one delivered, with backoff,
        for as long as etcd is unreachable: a consumer sees no gap and no repeat. Raises
        :class:`Compacted` (with etcd's compact revision) when the revision it needs is gone; the
        consumer then relists. ``progress_notify`` asks etcd for periodic empty batches that only
        advance :attr:`WatchBatch.revision`.

        With ``watch_thread`` (the default) the stream is read, decoded and resumed on the
        client's watch thread (:mod:`lastbackend.store.loop_thread`) and only whole batches are
        handed to the caller's loop: a process busy answering requests still takes each batch as
        soon as etcd sends it, and a burst of events does not hold up its requests.
        """
        args = (key, start_revision, prefix, prev_kv, progress_notify)
        if self._watch_stub is None:  # closed, or never connected: as any call then
            raise StoreUnavailable("etcd client is not connected")
        if self._watch_thread is None:
            async for batch in self._watch(*args):
                yield batch
        else:
            async for batch in self._watch_thread.iterate(lambda: self._watch(*args)):
                yield batch

    async def _watch(
        self, key: str, start_revision: int, prefix: bool, prev_kv: bool, progress_notify: bool
    ) -> AsyncIterator[WatchBatch]:
        range_end = prefix_end(key) if prefix else b""
        next_revision = start_revision
        backoff = WATCH_RETRY_MIN
        while True:
            if self._watch_stub is None:
                raise StoreUnavailable("etcd client is not connected")
            create = WatchCreateRequest(
                key=key.encode(),
                range_end=range_end,
                start_revision=next_revision,
                prev_kv=prev_kv,
                progress_notify=progress_notify,
            )

            # Our side of the stream stays open until ``closed`` is set. gRPC's call.cancel() does
            # not stop the task that feeds requests once the call has failed, so the generator
            # must end by itself, or every reconnect would leak a task waiting forever.
            closed = asyncio.Event()

            async def requests(create: Any = create, closed: asyncio.Event = closed) -> Any:
                yield WatchRequest(create_request=create)
                await closed.wait()

            try:
                call = self._watch_stub.Watch(requests(), metadata=_WATCH_METADATA)
            except grpc.aio.UsageError as exc:  # the channel closed under us: closing
                raise StoreUnavailable(f"etcd client is closed: {exc}") from exc
            try:
                async for resp in call:
                    if resp.compact_revision:
                        raise Compacted(next_revision, int(resp.compact_revision))
                    if resp.canceled:
                        raise StoreUnavailable(f"watch cancelled by etcd: {resp.cancel_reason}")
                    if resp.created:
                        continue
                    backoff = WATCH_RETRY_MIN
                    if resp.events:
                        events = [
                            WatchEvent(
                                kind="delete" if ev.type == ev.DELETE else "put",
                                kv=_kv(ev.kv),
                                prev=_kv(ev.prev_kv) if ev.HasField("prev_kv") else None,
                            )
                            for ev in resp.events
                        ]
                        revision = events[-1].kv.mod_revision
                    else:  # a progress notification: everything up to the header is delivered
                        events = []
                        revision = max(int(resp.header.revision), next_revision - 1)
                    next_revision = revision + 1
                    yield WatchBatch(events=events, revision=revision)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.OUT_OF_RANGE:
                    raise Compacted(next_revision, 0) from exc
                if code in _WATCH_FATAL:
                    raise StoreUnavailable(f"watch failed: {code.name}: {exc.details()}") from exc
                _log.info("watch on %s broken (%s), resuming at %d", key, code.name, next_revision)
            finally:
                closed.set()
                call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, WATCH_RETRY_MAX)


def _client(endpoints: Sequence[str], server_name: str | None, conn: dict[str, Any]) -> Etcd3Client:
    client = Etcd3Client(list(endpoints), tls_server_name=server_name, **conn)
    # gRPC's default reconnect backoff grows to 120 s: after an etcd outage of a minute the
    # channel could stay down for two more. Controllers must notice a restarted etcd within
    # seconds, so cap it (etcd3aio builds the channel from these options on connect()).
    manager = getattr(client, "_manager", None)
    options = getattr(manager, "grpc_options", None)
    if isinstance(options, list):
        options.extend(_CHANNEL_OPTIONS)
    return client


class Store(Protocol):
    """What repositories need of etcd: reads and transactions.

    :class:`Etcd` is one; a leader's ``controllers.leader.Fenced`` is the other, whose every
    transaction carries the leader's fence. Code that writes for a controller takes this, so
    the same repository call is fenced there and plain in the API.
    """

    async def get(self, key: str, *, revision: int = 0) -> KV | None: ...

    async def read_many(self, keys: Sequence[str], *, revision: int = 0) -> dict[str, KV]: ...

    async def range(
        self,
        prefix: str,
        *,
        start: str | None = None,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        end: str | None = None,
    ) -> Range: ...

    async def marks(self, prefix: str, *, start: str, revision: int, every: int) -> list[str]: ...

    async def pairs(self, prefix: str) -> tuple[int, list[tuple[bytes, bytes]]]: ...

    async def txn(
        self, compare: Sequence[Cmp], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult: ...

    def watch_batches(
        self,
        key: str,
        *,
        start_revision: int,
        prefix: bool = True,
        prev_kv: bool = True,
        progress_notify: bool = False,
    ) -> AsyncIterator[WatchBatch]: ...


PAGE = 1000
"""Keys per list page: a few MB at most, under gRPC's default 4 MB message limit."""
LIST_CONCURRENCY = 4
"""Pages of one list in flight at once."""


async def list_prefix(
    store: Store,
    prefix: str,
    *,
    keep: Callable[[str], bool] | None = None,
    revision: int = 0,
) -> tuple[int, list[KV]]:
    """Every key under ``prefix`` at one revision, and that revision.

    Read in pages of :data:`PAGE` keys, all pinned to the first page's revision, so the result is
    one moment of the tree however large it is (a watch from revision + 1 continues it exactly).
    ``keep`` filters page by page, so a caller that wants a few keys of a large subtree never
    holds the rest. ``revision`` lists the tree as it was then (:class:`Compacted` if that history
    is gone); 0: now.

    Each page is a range with both ends known. etcd (3.4, 3.5) counts every key from a range's
    start to its end to answer one with a limit, so pages of ``[last key, end of prefix)`` cost
    the whole rest of the prefix each: a list of N keys was O(N^2 / PAGE) on the server, 74 s
    for 500,000 keys. So after the first page one keys-only read gives the first key of every
    page (:meth:`Etcd.marks`), and the pages are then ranges between consecutive marks, each
    O(PAGE), a few in flight at once.
    """
    first = await store.range(prefix, revision=revision, limit=PAGE)
    revision = revision or first.revision

    def kept(kvs: list[KV]) -> list[KV]:
        return kvs if keep is None else [kv for kv in kvs if keep(kv.key)]

    found = kept(first.kvs)
    if not first.more or not first.kvs:
        return revision, found
    marks = await store.marks(prefix, start=first.kvs[-1].key + "\0", revision=revision, every=PAGE)
    bounds = [*marks, None]
    pages: list[list[KV]] = [[] for _ in marks]
    sem = asyncio.Semaphore(LIST_CONCURRENCY)

    async def page(i: int) -> None:
        async with sem:
            got = await store.range(prefix, start=bounds[i], end=bounds[i + 1], revision=revision)
        pages[i] = kept(got.kvs)

    async with asyncio.TaskGroup() as group:
        for i in range(len(marks)):
            group.create_task(page(i))
    for kvs in pages:
        found += kvs
    return revision, found


class Lease:
    """A lease granted by etcd and, once :meth:`keep_alive` is called, renewed in the background.

    :attr:`lost` is set when the lease can no longer be vouched for: etcd said it expired, it was
    revoked, or no renewal got through before the deadline (see the module docstring). It is never
    cleared: a lost lease is not used again, a new one is granted.
    """

    def __init__(self, etcd: Etcd, lease_id: int, ttl: int, deadline: float) -> None:
        self.etcd = etcd
        self.id = lease_id
        self.ttl = ttl
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self._deadline = deadline
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Lease {self.id:x} ttl={self.ttl} lost={self.lost_reason!r}>"

    @property
    def alive(self) -> bool:
        """Not lost, and the last renewal still covers now."""
        return not self.lost.is_set() and time.monotonic() < self._deadline

    @property
    def deadline(self) -> float:
        """The ``time.monotonic()`` until which the lease is certainly valid on the server."""
        return self._deadline

    def keep_alive(self) -> None:
        """Start renewing the lease in the background (idempotent)."""
        if self._task is None and not self.lost.is_set():
            self._task = asyncio.create_task(self._renew(), name=f"lease-keepalive-{self.id:x}")

    async def stop_keep_alive(self) -> None:
        """Stop renewing; the lease then expires on its own after its TTL."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def revoke(self) -> bool:
        """Stop renewing and revoke now, deleting the keys on the lease; False if already gone."""
        await self.stop_keep_alive()
        self._lose("revoked")
        return await self.etcd.revoke(self.id)

    async def __aenter__(self) -> Lease:
        self.keep_alive()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(StoreError):
            await self.revoke()

    def _lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()

    async def _renew(self) -> None:
        while True:
            sent = time.monotonic()
            remaining = self._deadline - sent
            if remaining <= 0:
                _log.warning("lease %x not renewed within its TTL; considering it lost", self.id)
                self._lose("not renewed in time")
                return
            try:
                async with asyncio.timeout(remaining):
                    ttl = await self.etcd.keep_alive_once(self.id)
            except (StoreError, TimeoutError) as exc:
                _log.info("lease %x keep-alive failed: %s", self.id, exc)
                await asyncio.sleep(min(0.25, max(0.0, self._deadline - time.monotonic())))
                continue
            if ttl <= 0:
                self._lose("expired")
                return
            self._deadline = sent + ttl
            await asyncio.sleep(ttl / 3)
