"""Deploys that go wrong, through the router under load: real Docker, Caddy and the daemon.

Each test keeps one client sending requests through the router the whole time and asserts that
none failed while the old containers could serve: a version that serves for a second and exits,
one that never opens its port, and the rollback from them. The crash loop's backoff is measured
on the same daemon. Node faults are in ``test_nodes.py``.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest

from lastbackend.store.embedded import EmbeddedEtcd
from tests.e2e.harness import LABEL_SERVICE, Harness, eventually
from tests.e2e.test_containers import App
from tests.e2e.test_routing import HOST, answering, serving, steady
from tests.support import RawEtcd

pytestmark = [pytest.mark.docker, pytest.mark.etcd]

SERVE_THEN_EXIT = "hostname > /www/id; httpd -p 8080 -h /www; sleep 1; exit 1"
"""A bad version: it opens its port (so its check passes), serves for a second, then exits 1."""

NEVER_LISTENS = "sleep 3600"
"""A bad version that runs but never opens its port."""

SERVICE = "/api/projects/shop/services/web"


async def rollout(h: Harness, app: App) -> dict[str, Any]:
    _, body = await h.call(app.proc, "GET", SERVICE, expect=200)
    return dict(body["status"]["rollout"] or {})


async def reaches(h: Harness, app: App, state: str, revision: int, within: float) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        found = await rollout(h, app)
        return found if (found.get("state"), found.get("revision")) == (state, revision) else None

    found: dict[str, Any] = await eventually(
        probe, within, f"rollout {revision} {state}", explain=h.explain
    )
    return found


class Load:
    """One client sending ~100 requests a second through the router while the block runs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.results: list[tuple[int, str]] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Load:
        self._task = asyncio.create_task(steady(self.port, HOST, self.results, self._stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    def check(self, served_only_by: set[str]) -> None:
        failed = [r for r in self.results if r[0] != 200]
        assert len(self.results) > 100, "the stream was steady"
        assert failed == [], f"{len(failed)} of {len(self.results)} failed: {failed[:5]}"
        by = {body for _, body in self.results}
        assert by <= {c[:12] for c in served_only_by}, f"served by {by}"


async def test_a_version_that_serves_a_second_then_exits_never_gets_a_request_and_rolls_back(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, base_image: str
) -> None:
    h = harness
    app, sid, port, old = await serving(h, etcd_server.endpoint, base_image, 3)
    await app.patch_config("web", {"progress_deadline": 20})
    await reaches(h, app, "complete", 1, 30)
    async with Load(port) as load:
        await app.patch_config("web", {"command": SERVE_THEN_EXIT})
        failed = await reaches(h, app, "failed", 2, 60)
        # it ran for about a second (Docker's times, to the second) and was restarted with backoff
        reason = re.fullmatch(
            r"new containers exit with code 1 after ([0-2]) s \((\d+) restarts\)",
            failed["reason"],
        )
        assert reason, failed
        assert 1 <= int(reason.group(2)) <= 5, failed
        assert (failed["ready"], failed["desired"]) == (0, 3)
        running = {c["Id"] for c in h.containers(f"{LABEL_SERVICE}={sid}", running=True)}
        assert set(old) <= running, "the old containers kept running"

        # roll back to revision 1: a new revision with the old template, which the old
        # containers already run, so they are kept (same ids) and the bad pod goes
        await h.call(app.proc, "POST", SERVICE + "/rollback", {}, expect=200)
        done = await reaches(h, app, "complete", 3, 30)
        assert (done["ready"], done["desired"]) == (3, 3)
        await eventually(lambda: answering(port, HOST, old), 20, "the old three answer")
    load.check(served_only_by=set(old))
    mine = h.containers(f"{LABEL_SERVICE}={sid}")
    assert sorted(c["Id"] for c in mine) == sorted(old), "the bad container was removed"
    _, revisions = await h.call(app.proc, "GET", SERVICE + "/revisions", expect=200)
    assert [r["revision"] for r in revisions["resources"]] == [3, 2, 1]


async def test_a_version_that_never_listens_fails_at_its_deadline_and_a_crash_loop_backs_off(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, base_image: str
) -> None:
    h = harness
    app, sid, port, old = await serving(h, etcd_server.endpoint, base_image, 2)
    # a crash loop beside it, on the same node agent: no port, so a process check
    crash = await app.create_service("crash", base_image, command="exit 3", ports={})
    crash_started = time.monotonic()
    await app.patch_config("web", {"progress_deadline": 10})
    await reaches(h, app, "complete", 1, 30)
    async with Load(port) as load:
        began = time.monotonic()
        await app.patch_config("web", {"command": NEVER_LISTENS})
        failed = await reaches(h, app, "failed", 2, 40)
        assert time.monotonic() - began >= 9, "failed at the deadline, not before"
        assert failed["reason"] == (
            "new containers are running but not ready (their health check does not pass)"
        ), failed
        await asyncio.sleep(2)  # and the old ones go on serving after it failed
    load.check(served_only_by=set(old))
    running = {c["Id"] for c in h.containers(f"{LABEL_SERVICE}={sid}", running=True)}
    assert set(old) <= running
    assert len(running) == 3, "replicas + 1: no more new pods once failed"

    # the crash loop: restarted after 1, 2, 4, 8, 16, 32 s... so at most 6 times in 60 s
    await asyncio.sleep(max(0.0, 60 - (time.monotonic() - crash_started)))
    [container] = await app.reported("crash")
    assert 4 <= container["restarts"] <= 6, container
    assert container["reason"] == "CrashLoopBackOff" or container["status"] == "running"
    assert container["exit_code"] in (3, None), container
    # each restart replaces the stopped container: never a pile of dead ones
    assert len(h.containers(f"{LABEL_SERVICE}={crash}")) == 1
