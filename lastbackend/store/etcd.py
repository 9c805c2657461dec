"""The etcd client seam: the only module that imports the etcd library.

Repositories speak in :class:`KV`, :class:`Op` and :class:`Cmp` values and one call,
:meth:`Etcd.txn`, so every API call maps to exactly one etcd transaction and tests can read what
was written with the same small vocabulary. One :class:`Etcd` lives per process, with one gRPC
channel per member: which member a call goes to, and how a call moves off a member that stops
answering, is :mod:`lastbackend.store.members`; what a write whose answer was lost does is
:mod:`lastbackend.store.txn_outcome`.

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
from etcd3aio import EtcdError
from etcd3aio._protobuf import (
    Compare,
    KVStub,
    LeaseGrantRequest,
    LeaseKeepAliveRequest,
    LeaseRevokeRequest,
    LeaseStub,
    LeaseTimeToLiveRequest,
    RangeRequest,
    TxnRequest,
    WatchCreateRequest,
    WatchRequest,
    WatchStub,
)
from etcd3aio.kv import KVService

from lastbackend.store import members, txn_outcome
from lastbackend.store.keys import prefix_end
from lastbackend.store.loop_thread import LoopThread
from lastbackend.store.members import Member, Members

_log = logging.getLogger(__name__)

# etcd's default --max-txn-ops; a transaction with more operations is refused by the server.
MAX_TXN_OPS = 128

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

    def add_to(self, ops: Any) -> None:
        """Append this operation to a repeated ``RequestOp`` field of a request being built:
        filled in place, which costs half of making the messages and copying them in."""
        op = ops.add()
        if self.kind == "put":
            put = op.request_put
            put.SetInParent()
            put.key = self.key.encode()
            put.value = self.value
            put.lease = self.lease
        elif self.kind == "delete":
            delete = op.request_delete_range
            delete.SetInParent()
            delete.key = self.key.encode()
            delete.range_end = self.range_end
        else:
            get = op.request_range
            get.SetInParent()
            get.key = self.key.encode()
            get.range_end = self.range_end
            get.revision = self.revision
            get.keys_only = self.keys_only


_COMPARE_RESULTS = {
    "==": Compare.EQUAL,
    "!=": Compare.NOT_EQUAL,
    "<": Compare.LESS,
    ">": Compare.GREATER,
}


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

    def add_to(self, compares: Any) -> None:
        """Append this comparison to a request's repeated ``Compare`` field (see Op.add_to)."""
        c = compares.add()
        c.result = _COMPARE_RESULTS[self.op]
        c.key = self.key.encode()
        if self.target == "create":
            c.target = Compare.CREATE
            c.create_revision = self.revision
            c.range_end = self.range_end
        elif self.target == "mod":
            c.target = Compare.MOD
            c.mod_revision = self.revision
        else:
            c.target = Compare.VALUE
            c.value = self.value


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


def _txn_result(resp: Any) -> TxnResult:
    reads = [
        [_kv(kv) for kv in r.response_range.kvs]
        for r in resp.responses
        if r.WhichOneof("response") == "response_range"
    ]
    return TxnResult(succeeded=resp.succeeded, revision=resp.header.revision, reads=reads)


@attrs.frozen
class TLS:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


class _Failed(Exception):
    """One attempt on one member failed in a way another member may not."""

    def __init__(self, member: Member, code: str, sent: bool) -> None:
        super().__init__(f"{member.endpoint}: {code}")
        self.sent = sent  # the request may have reached etcd (a txn's outcome is unknown)


FIRST_TRY = 2.0
"""Seconds the first attempt of a retryable call waits for its member, with several members."""

# Failures after which another member is tried. Any other status (bad argument, permission,
# a full database, too many operations) would be the same on every member.
_TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
# gRPC's words for "no connection to that member": the request was never sent.
_NOT_SENT = ("failed to connect to all addresses", "connection refused", "connect failed")


def _never_sent(exc: grpc.aio.AioRpcError) -> bool:
    details = (exc.details() or "").lower()
    return exc.code() == grpc.StatusCode.UNAVAILABLE and any(w in details for w in _NOT_SENT)


class Etcd:
    """One long-lived etcd client for the process (see :mod:`lastbackend.store.members`)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        tls: TLS | None = None,
        timeout: float = 5.0,
        watch_thread: bool = True,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self._many = len(self.endpoints) > 1
        self.timeout = timeout
        self._tls = tls or TLS()
        self._members = Members(self.endpoints)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._methods: dict[tuple[str, type, str], tuple[grpc.aio.Channel, Any]] = {}
        self._watch_thread = LoopThread("etcd-watch") if watch_thread else None
        """Where watches are read (see :meth:`watch_batches`); ``None``: on the caller's loop."""
        self._watch_channels: dict[str, grpc.aio.Channel] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._connected = False

    def _credentials(self) -> grpc.ChannelCredentials | None:
        tls = self._tls
        if not tls.ca:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=tls.ca.read_bytes(),
            private_key=tls.key.read_bytes() if tls.key else None,
            certificate_chain=tls.cert.read_bytes() if tls.cert else None,
        )

    def _open_channels(self) -> dict[str, grpc.aio.Channel]:
        credentials = self._credentials()
        return {e: members.channel(e, credentials) for e in self.endpoints}

    async def connect(self) -> None:
        if not self._connected:
            self._channels = self._open_channels()
            if self._watch_thread is not None:
                # The same kind of loop as the caller's (uvloop in the daemon): a watch event
                # then costs the thread ~15% less CPU than on asyncio's (docs/benchmarks.md).
                self._watch_thread.start(type(asyncio.get_running_loop()))
                self._watch_channels = await self._watch_thread.call(self._connect_watch())
            else:
                self._watch_channels = self._channels
            if len(self.endpoints) > 1:  # with one member there is nothing to choose
                self._prober = asyncio.create_task(
                    self._members.probe_forever(lambda m: self._channels[m.endpoint]),
                    name="etcd-member-probe",
                )
            self._connected = True

    async def _connect_watch(self) -> dict[str, grpc.aio.Channel]:
        """On the watch thread: channels of its own (a gRPC channel belongs to one event loop)."""
        return self._open_channels()

    async def close(self) -> None:
        if self._connected:
            self._connected = False
            watch_channels, self._watch_channels = self._watch_channels, None  # first: a watch
            # between retries stops instead of reopening
            if self._prober is not None:
                self._prober.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._prober
                self._prober = None
            for chan in self._channels.values():
                await chan.close()
            self._channels = {}
            if self._watch_thread is not None:
                if watch_channels is not None:

                    async def close_all(chans: dict[str, grpc.aio.Channel]) -> None:
                        for chan in chans.values():
                            await chan.close()

                    with contextlib.suppress(Exception):  # closing: a broken channel is fine
                        await self._watch_thread.call(close_all(watch_channels))
                self._watch_thread.stop()

    async def __aenter__(self) -> Etcd:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def member(self) -> str:
        """The endpoint the next request goes to (the member this client sticks to)."""
        return self._members.order()[0].endpoint

    # sending -----------------------------------------------------------------------------------

    def _channel(self, member: Member) -> grpc.aio.Channel:
        if not self._connected:
            raise StoreUnavailable("etcd client is not connected")
        return self._channels[member.endpoint]

    @property
    def _kv(self) -> Any:
        """etcd3aio's KV service on the preferred member, for the rare raw call (tests)."""
        return KVService(self._channel(self._members.order()[0]), max_attempts=1)

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (EtcdError, TimeoutError) as exc:
            raise StoreUnavailable(f"etcd unavailable: {exc}") from exc
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                raise Compacted(0, 0) from exc
            raise StoreUnavailable(f"etcd error: {exc.code().name}: {exc.details()}") from exc

    def _method(self, member: Member, stub: type, method: str) -> Any:
        """The gRPC method object of ``stub`` on the member's channel, made once per channel:
        a stub builds a callable for every method of its service, which costs more than the
        call's own set-up, so it is not rebuilt per request."""
        chan = self._channel(member)
        key = (member.endpoint, stub, method)
        made = self._methods.get(key)
        if made is None or made[0] is not chan:  # none yet, or the channel was reopened
            made = (chan, getattr(stub(chan), method))
            self._methods[key] = made
        return made[1]

    async def _send(
        self, member: Member, stub: type, method: str, request: Any, within: float
    ) -> Any:
        """One attempt on one member; :class:`_Failed` if another member might do better."""
        call = self._method(member, stub, method)(request, timeout=within)
        with self._members.track(member, call):
            try:
                resp = await call
            except asyncio.CancelledError:
                if not members.cancelled_by_member():
                    raise
                self._members.failed(member)
                raise _Failed(member, "member stopped answering", sent=True) from None
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.OUT_OF_RANGE:
                    raise Compacted(0, 0) from exc
                if code == grpc.StatusCode.NOT_FOUND and method == "LeaseRevoke":
                    raise
                if code not in _TRANSIENT:
                    raise StoreUnavailable(f"etcd error: {code.name}: {exc.details()}") from exc
                self._members.failed(member)
                sent = not _never_sent(exc)
                raise _Failed(member, f"{code.name}: {exc.details()}", sent) from exc
        header = getattr(resp, "header", None)
        self._members.succeeded(member, int(header.revision) if header is not None else 0)
        return resp

    async def _retrying(self, stub: type, method: str, request: Any) -> Any:
        """A call that is safe to repeat (a read, a lease call): on each member in turn until
        one answers or :attr:`timeout` has passed. With several members the first attempt
        waits at most :data:`FIRST_TRY`: a read a follower cannot serve (its leader just died)
        is answered sooner by asking again than by waiting for etcd's own 7 s timeout."""
        deadline = time.monotonic() + self.timeout
        last = "no member tried"
        first = len(self.endpoints) > 1
        while True:
            for member in self._members.order():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StoreUnavailable(f"etcd unavailable: {last}")
                within = min(remaining, FIRST_TRY) if first else remaining
                first = False
                try:
                    return await self._send(member, stub, method, request, within)
                except _Failed as exc:
                    last = str(exc)
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    async def _range(self, request: RangeRequest) -> Any:
        return await self._retrying(KVStub, "Range", request)

    # reads -------------------------------------------------------------------------------------

    async def get(self, key: str, *, revision: int = 0) -> KV | None:
        resp = await self._range(RangeRequest(key=key.encode(), revision=revision))
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
        resp = await self._range(
            RangeRequest(
                key=(start or prefix).encode(),
                range_end=end.encode() if end else prefix_end(prefix),
                revision=revision,
                limit=limit,
                keys_only=keys_only,
                count_only=count_only,
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
        resp = await self._range(
            RangeRequest(
                key=start.encode(), range_end=prefix_end(prefix), revision=revision, keys_only=True
            )
        )
        kvs = resp.kvs
        return [kvs[i].key.decode() for i in range(0, len(kvs), every)]

    async def pairs(self, prefix: str) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Every (key, value) under ``prefix`` as raw bytes, and the revision read at.

        For large indexes: building a :class:`KV` per entry costs more than the read itself.
        """
        resp = await self._range(RangeRequest(key=prefix.encode(), range_end=prefix_end(prefix)))
        return int(resp.header.revision), [(kv.key, kv.value) for kv in resp.kvs]

    # transactions ------------------------------------------------------------------------------

    async def txn(
        self, compare: Sequence[Cmp], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """One transaction. A read-only one is retried on another member like any read; one
        that writes follows the rules of :mod:`lastbackend.store.txn_outcome`."""
        if len(success) > MAX_TXN_OPS or len(failure) > MAX_TXN_OPS:
            raise ValueError(f"a transaction holds at most {MAX_TXN_OPS} operations")
        request = TxnRequest()
        for c in compare:
            c.add_to(request.compare)
        for o in success:
            o.add_to(request.success)
        for o in failure:
            o.add_to(request.failure)
        if not any(o.kind != "get" for o in (*success, *failure)):
            return _txn_result(await self._retrying(KVStub, "Txn", request))
        floor = self._members.revision  # before anything is sent
        # Whether a second copy would be harmless: it bounds the first try only with several
        # members, so with one it is worked out only once an answer is lost.
        safe = txn_outcome.retry_is_safe(compare, success, failure) if self._many else None
        unsure = False  # an earlier attempt may have been applied
        for _ in range(txn_outcome.MAX_ROUNDS):
            resp = await self._write_once(request, first_try=FIRST_TRY if safe else None)
            if resp is not None:
                result = _txn_result(resp)
                if result.succeeded or not unsure:
                    return result
                # Our retry's comparison failed: perhaps because the first attempt landed late.
            try:
                found = await txn_outcome.applied(self, compare, success, failure, floor)
            except Compacted as exc:
                raise StoreUnavailable("a lost write's outcome is past etcd's history") from exc
            if found is not None:
                _log.info("a txn whose answer was lost had been applied at %d", found.revision)
                return found
            if resp is not None:
                return result
            if safe is None:
                safe = txn_outcome.retry_is_safe(compare, success, failure)
            if not safe:
                raise StoreUnavailable("etcd did not answer a write; its outcome is unknown")
            unsure = True
        raise StoreUnavailable("etcd did not answer a write after several attempts")

    async def _write_once(self, request: TxnRequest, *, first_try: float | None) -> Any:
        """Send a writing txn until a member answers (its response), or until an attempt may
        have reached etcd without an answer (None: the caller must find out what happened).

        ``first_try`` bounds the wait for an answer (with several members): a txn a follower
        forwarded to a leader that then died is never answered, and etcd itself gives up on it
        only after 7 s. Only for a txn that may safely be sent again (see txn_outcome).
        """
        deadline = time.monotonic() + self.timeout
        last = "no member tried"
        while True:
            for member in self._members.order():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StoreUnavailable(f"etcd unavailable: {last}")
                if first_try is not None and self._many:
                    remaining = min(remaining, first_try)
                try:
                    return await self._send(member, KVStub, "Txn", request, remaining)
                except _Failed as exc:
                    if exc.sent:
                        return None
                    last = str(exc)
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

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
        resp = await self._range(RangeRequest(key=b"/lastbackend", count_only=True))
        return int(resp.header.revision)

    # leases ------------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> Lease:
        """A new lease of ``ttl`` seconds (etcd may round it up), not yet kept alive.

        Call :meth:`Lease.keep_alive` (or use it as ``async with``) to renew it in the background.
        A grant whose answer is lost is simply asked again: the lease nobody holds expires.
        """
        sent = time.monotonic()
        resp = await self._retrying(LeaseStub, "LeaseGrant", LeaseGrantRequest(TTL=ttl))
        if resp.error:
            raise StoreError(f"lease grant refused: {resp.error}")
        return Lease(self, int(resp.ID), int(resp.TTL), sent + int(resp.TTL))

    async def revoke(self, lease_id: int) -> bool:
        """Revoke a lease and delete every key attached to it; False if it was already gone."""
        try:
            await self._retrying(LeaseStub, "LeaseRevoke", LeaseRevokeRequest(ID=lease_id))
        except grpc.aio.AioRpcError as exc:  # NOT_FOUND: gone (perhaps by our lost first try)
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise StoreUnavailable(f"etcd error: {exc.code().name}: {exc.details()}") from exc
        return True

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds the lease has left on the server; -1 if it has expired or never existed."""
        resp = await self._retrying(
            LeaseStub, "LeaseTimeToLive", LeaseTimeToLiveRequest(ID=lease_id)
        )
        return int(resp.TTL)

    async def keep_alive_once(self, lease_id: int) -> int:
        """Renew a lease once; the TTL etcd granted, 0 if the lease no longer exists."""
        last = "no member tried"
        for member in self._members.order():
            try:
                return await self._keep_alive_on(member, lease_id)
            except _Failed as exc:
                last = str(exc)
        raise StoreUnavailable(f"lease keep-alive failed: {last}")

    async def _keep_alive_on(self, member: Member, lease_id: int) -> int:
        # A plain list, not an async generator: gRPC stops reading the requests when the call
        # fails, and a generator left suspended would be finalized after its loop is gone.
        stub = LeaseStub(self._channel(member))
        call = stub.LeaseKeepAlive([LeaseKeepAliveRequest(ID=lease_id)])
        try:
            with self._members.track(member, call):
                async with asyncio.timeout(self.timeout):
                    async for resp in call:
                        self._members.succeeded(member, int(resp.header.revision))
                        return int(resp.TTL)
        except asyncio.CancelledError:
            if not members.cancelled_by_member():
                raise
            self._members.failed(member)
            raise _Failed(member, "member stopped answering", sent=True) from None
        except grpc.aio.AioRpcError as exc:
            self._members.failed(member)
            raise _Failed(member, exc.code().name, sent=True) from exc
        except TimeoutError as exc:
            self._members.failed(member)
            raise _Failed(member, "keep-alive timed out", sent=True) from exc
        finally:
            call.cancel()
        self._members.failed(member)
        raise _Failed(member, "keep-alive stream closed without an answer", sent=True)

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
        if self._watch_channels is None:  # closed, or never connected: as any call then
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
            channels = self._watch_channels
            if channels is None:
                raise StoreUnavailable("etcd client is not connected")
            member = self._members.order()[0]
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
                call = WatchStub(channels[member.endpoint]).Watch(
                    requests(), metadata=_WATCH_METADATA
                )
            except grpc.aio.UsageError as exc:  # the channel closed under us: closing
                raise StoreUnavailable(f"etcd client is closed: {exc}") from exc
            try:
                with self._members.track(member, call):
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
                        else:  # a progress notification: everything up to it is delivered
                            events = []
                            revision = max(int(resp.header.revision), next_revision - 1)
                        next_revision = revision + 1
                        yield WatchBatch(events=events, revision=revision)
            except asyncio.CancelledError:
                if not members.cancelled_by_member():
                    raise
                _log.info("watch on %s: %s stopped answering, resuming at %d on another member",
                          key, member.endpoint, next_revision)  # fmt: skip
                self._members.failed(member)
                backoff = WATCH_RETRY_MIN
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.OUT_OF_RANGE:
                    raise Compacted(next_revision, 0) from exc
                if code in _WATCH_FATAL:
                    raise StoreUnavailable(f"watch failed: {code.name}: {exc.details()}") from exc
                self._members.failed(member)
                _log.info("watch on %s broken (%s), resuming at %d", key, code.name, next_revision)
            finally:
                closed.set()
                call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, WATCH_RETRY_MAX)


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
