"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any


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
