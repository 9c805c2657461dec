"""The etcd client seam: the only module that imports the etcd library.

Repositories speak in :class:`KV`, :class:`Op` and :class:`Cmp` values and one call,
:meth:`Etcd.txn`, so every API call maps to exactly one etcd transaction and tests can read what
was written with the same small vocabulary. One :class:`Etcd` (one gRPC channel) lives per process.

Reads are linearizable (etcd's default). A read can be pinned to a revision so that a list made
of several round trips still describes one moment of the tree.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import grpc
from etcd3aio import Etcd3Client, EtcdError
from etcd3aio._protobuf import (
    Compare,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
)

from lastbackend.store.keys import prefix_end

# etcd's default --max-txn-ops; a transaction with more operations is refused by the server.
MAX_TXN_OPS = 128


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
    def not_modified_after(cls, key: str, revision: int) -> Cmp:
        return cls(key, "mod", "<", revision + 1)

    @classmethod
    def value_is(cls, key: str, value: bytes | str) -> Cmp:
        return cls(key, "value", "==", value=value.encode() if isinstance(value, str) else value)

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
                result=result, target=Compare.CREATE, key=key, create_revision=self.revision
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


def _kv(raw: Any) -> KV:
    return KV(
        key=raw.key.decode(),
        value=bytes(raw.value),
        create_revision=raw.create_revision,
        mod_revision=raw.mod_revision,
        version=raw.version,
    )


@attrs.frozen
class TLS:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


class Etcd:
    """One long-lived etcd client for the process."""

    def __init__(
        self, endpoints: Sequence[str], *, tls: TLS | None = None, timeout: float = 5.0
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
        self._client = Etcd3Client(list(self.endpoints), tls_server_name=server_name, **conn)
        self._connected = False

    async def connect(self) -> None:
        if not self._connected:
            await self._client.connect()
            self._connected = True

    async def close(self) -> None:
        if self._connected:
            await self._client.close()
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
    ) -> Range:
        """Keys under ``prefix`` (from ``start`` on, if given), in key order."""
        resp = await self._call(
            self._kv.get(
                start or prefix,
                prefix_end(prefix),
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

    async def pairs(self, prefix: str) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Every (key, value) under ``prefix`` as raw bytes, and the revision read at.

        For large indexes: building a :class:`KV` per entry costs more than the read itself.
        """
        resp = await self._call(self._kv.get(prefix, prefix_end(prefix), timeout=self.timeout))
        return int(resp.header.revision), [(kv.key, kv.value) for kv in resp.kvs]

    async def put(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
        resp = await self._call(self._kv.put(key, value, lease=lease, timeout=self.timeout))
        return int(resp.header.revision)

    async def delete_prefix(self, prefix: str) -> int:
        resp = await self._call(self._kv.delete(prefix, prefix_end(prefix), timeout=self.timeout))
        return int(resp.deleted)

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

    async def watch(
        self, prefix: str, *, start_revision: int, prev_kv: bool = True
    ) -> AsyncIterator[list[WatchEvent]]:
        """Batches of changes under ``prefix`` from ``start_revision`` on (issue 3 builds on it)."""
        if self._client.watch is None:
            raise StoreUnavailable("etcd client is not connected")
        stream = self._client.watch.watch(
            prefix, prefix_end(prefix), start_revision=start_revision, prev_kv=prev_kv
        )
        async for resp in stream:
            if resp.compact_revision:
                raise Compacted(start_revision, resp.compact_revision)
            events = [
                WatchEvent(
                    kind="delete" if ev.type == ev.DELETE else "put",
                    kv=_kv(ev.kv),
                    prev=_kv(ev.prev_kv) if ev.HasField("prev_kv") else None,
                )
                for ev in resp.events
            ]
            if events:
                yield events
