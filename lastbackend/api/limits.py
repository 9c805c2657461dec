"""Bounds on what callers can hold open in one API process: slots for long-lived streams.

A stream that never ends by itself (``/api/events``, a log with ``?follow=true``) holds a socket,
a task and its source (an etcd watch, a poll of etcd every few hundred milliseconds, or one
connection per container to its node) for as long as its client stays. Without a bound, one
caller opening streams in a loop exhausts the process's file descriptors (1024 by default) and
the etcd client's streams, and every other caller with them. So each kind of stream takes a slot
from a :class:`Slots` pool, sized by a setting; with none free the request is a 429 in the usual
error shape, naming the setting, with ``Retry-After``. A slot is taken before the response
starts and given back when the handler returns: when the client leaves (streams notice within a
second), when the stream ends, and at shutdown, which ends every stream.

Two pools, not one: event streams are cheap and many (a dashboard tab each), followed logs cost
more each; a dashboard full of tabs must not lock out a ``logs --follow``, nor the reverse.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import attrs

from lastbackend.api.errors import ApiError

RETRY_AFTER = 5
"""Seconds a refused client is told to wait: a slot frees when any stream of its kind ends."""


@attrs.define
class Slots:
    """A pool of ``limit`` slots for one kind of stream in this process."""

    what: str
    """What a slot holds, plural, for the error: ``event streams``."""
    setting: str
    """The setting that sizes the pool, named in the 429: ``api.max_streams``."""
    limit: int
    held: int = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """One slot for the ``with`` block; :class:`ApiError` 429 when all are taken."""
        if self.held >= self.limit:
            raise ApiError(
                429,
                f"{self.limit} {self.what} are open in this process, as many as {self.setting} "
                f"allows; close one or retry in {RETRY_AFTER}s",
                headers={"Retry-After": str(RETRY_AFTER)},
            )
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1
