"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from lastbackend.secrets import generate_key
from lastbackend.store.embedded import EmbeddedEtcd
from lastbackend.store.etcd import Etcd, Op, WatchEvent
from lastbackend.store.keys import prefix_end


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy, and return that; fail with its last
    value after ``within`` seconds. For state that converges, never as a fixed sleep."""
    deadline = asyncio.get_running_loop().time() + within
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"not reached in {within}s; last: {last!r}")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free at this moment (another process may still take it before the caller binds)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


TEST_KEY = generate_key()
"""The Fernet key of the ``settings`` fixture, for the controllers a test runs beside its API."""


class RawEtcd(Etcd):
    """The etcd client with the raw calls tests arrange and break the tree with.

    The product writes only in transactions (an API call is one; a leader's are fenced), so
    these are not part of :class:`Etcd`: a bare put or a prefix delete written into product
    code by habit would not be an API call's txn nor a fenced one.
    """

    async def put(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
        """One key, unconditionally; the revision it was written at."""
        return (await self.txn([], [Op.put(key, value, lease=lease)])).revision

    async def delete_prefix(self, prefix: str) -> int:
        """Every key starting with ``prefix`` (no trailing slash needed); the revision after."""
        delete = Op("delete", prefix, range_end=prefix_end(prefix))
        return (await self.txn([], [delete])).revision

    async def compact(self, revision: int, *, physical: bool = True) -> None:
        """Discard the history before ``revision``, to force :class:`Compacted` on a watch."""
        await self._call(self._kv.compact(revision, physical=physical, timeout=self.timeout))

    async def watch(
        self, prefix: str, *, start_revision: int, prev_kv: bool = True
    ) -> AsyncIterator[list[WatchEvent]]:
        """The non-empty batches of :meth:`Etcd.watch_batches`."""
        async for batch in self.watch_batches(
            prefix, start_revision=start_revision, prev_kv=prev_kv
        ):
            if batch.events:
                yield batch.events


def local_etcd(data_dir: Path, log: Path) -> EmbeddedEtcd:
    """An etcd of a test's or a benchmark's own on loopback ports (not started yet)."""
    return EmbeddedEtcd(
        data_dir, client=f"127.0.0.1:{free_port()}", peer=f"127.0.0.1:{free_port()}", log=log
    )


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free at this moment: held open together while they are picked,
    so two calls of :func:`free_port` in a row cannot hand out the same one."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


CLI = Path(sys.executable).parent / "lastbackend"
"""The installed console script, as a user runs it."""


async def run_cli(
    *argv: str,
    home: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    within: float = 300,
) -> tuple[int, str, str]:
    """:data:`CLI` in a subprocess: (exit code, stdout, stderr). No ``LB_*`` or ``XDG_*`` from
    this process leaks in; its config lives under ``home``; no colour."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LB_", "XDG_"))}
    clean.update(XDG_CONFIG_HOME=str(home), NO_COLOR="1", **(env or {}))
    proc = await asyncio.create_subprocess_exec(
        str(CLI),
        *argv,
        env=clean,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), within)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
