"""The event stream: a page follows ``/api/events`` and picks up where it left off when the API
comes back after a restart (``Last-Event-ID``), showing what changed while it was down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, expect

from lastbackend.store.embedded import EmbeddedEtcd
from tests.browser.dashboard import Api, live, rows, seen, sign_in, start_api, token_flags, unique
from tests.integration.test_daemon import Daemon

pytestmark = [pytest.mark.etcd, pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture
def restartable(browser_etcd: EmbeddedEtcd, tmp_path: Path) -> Iterator[list[Daemon]]:
    """API processes a test starts (and restarts on the same port); all killed at the end."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.cleanup()


async def test_the_stream_reconnects_after_the_api_restarts_and_resumes_where_it_was(
    page: Page,
    context: BrowserContext,
    guarded: Api,
    browser_etcd: EmbeddedEtcd,
    tmp_path: Path,
    restartable: list[Daemon],
) -> None:
    first = start_api(tmp_path, browser_etcd, *token_flags())
    restartable.append(first)
    api = Api(first, guarded.token)
    await sign_in(page, api)
    await live(page)
    await page.evaluate("() => { window.notReloaded = true; }")
    stream = page.get_by_role("status", name="Event stream")

    first.cleanup()  # SIGKILL: the connection drops as in a crash
    await expect(stream).to_have_attribute("data-state", "reconnecting")
    while_down = unique("while-down")
    guarded.call("POST", "/api/projects", {"name": while_down}, expect=201)  # another API process
    streams_before = len(event_requests(context))

    second = start_api(tmp_path, browser_etcd, *token_flags(), port=first.port)
    restartable.append(second)
    await expect(stream).to_have_attribute("data-state", "live", timeout=20_000)
    await expect(rows(page, "Projects").filter(has_text=while_down)).to_have_count(1)
    assert await page.evaluate("() => window.notReloaded === true"), "no reload"

    resumed = event_requests(context)[streams_before:]
    assert resumed, "the page opened the stream again"
    ids = [(await r.all_headers()).get("last-event-id") for r in resumed]
    assert any(ids), f"the stream resumed with Last-Event-ID, not from scratch: {ids}"

    after = unique("after")
    api.call("POST", "/api/projects", {"name": after}, expect=201)
    await expect(rows(page, "Projects").filter(has_text=after)).to_have_count(1)


def event_requests(context: BrowserContext) -> list:  # type: ignore[type-arg]
    return [r for r in seen(context).requests if "/api/events" in r.url]
