"""Fixtures for the dashboard in a real browser: Debian's Chromium driven by Playwright, against
``lastbackend`` processes on an etcd of this directory's own.

- ``browser``: one Chromium for the session (``executable_path``: Playwright's own browser
  download is not reachable here and is never run). Each test gets a fresh context (``page``), so
  no token or cache leaks from one test into the next.
- ``guarded``: ``lastbackend api`` with an admin token (:data:`ADMIN`) and a read-only one
  (:data:`READER`), for the session; ``open_api``: one with no token (the loopback default), where
  the dashboard skips its sign-in form. Both on ``browser_etcd``, a server of the browser tests'
  own, so the other suites emptying theirs between tests never pulls data from under a page.
- ``context`` and its ``page``: a new context at 1280x800 that records every request its pages
  make; when the test ends it fails the test on a request to anything off this machine (the
  dashboard must work air-gapped: no CDN, font or script from elsewhere), an uncaught script
  error, or a Content-Security-Policy violation.

The async API, under pytest-asyncio with one event loop for the session: Playwright's sync API
leaves an event loop set on the main thread that breaks the pytest-asyncio tests collected after
it, while the async one runs on pytest-asyncio's own loop, so this directory can run anywhere in
the suite. The Docker-backed tests (``test_docker.py``) have their own etcd and daemon.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from lastbackend.store.embedded import EmbeddedEtcd
from tests.browser.dashboard import (
    ADMIN,
    CHROMIUM,
    Api,
    Apis,
    check_seen,
    new_context,
    spawn_api,
    token_flags,
)
from tests.conftest import new_etcd_server


@pytest.fixture(scope="session")
def browser_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    server = new_etcd_server(tmp_path_factory.mktemp("browser-etcd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def apis(browser_etcd: EmbeddedEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apis]:
    """Both API processes, started side by side (a start is mostly Python importing, and the
    two overlap on two cores)."""
    tmp = tmp_path_factory.mktemp("apis")
    guarded = spawn_api(tmp / "guarded", browser_etcd, *token_flags())
    open_ = spawn_api(tmp / "open", browser_etcd)
    try:
        for daemon in (guarded, open_):
            daemon.wait_ready()
        yield Apis(Api(guarded, ADMIN), Api(open_))
    finally:
        guarded.cleanup()
        open_.cleanup()


@pytest.fixture(scope="session")
def guarded(apis: Apis) -> Api:
    """The API with :data:`ADMIN` and :data:`READER`; calls go with the admin token."""
    return apis.guarded


@pytest.fixture(scope="session")
def open_api(apis: Apis) -> Api:
    """The API with no token configured (loopback): every caller is an admin."""
    return apis.open


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is not installed (Debian: chromium)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(loop_scope="session")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await new_context(browser)
    yield ctx
    await ctx.close()
    check_seen(ctx)


@pytest_asyncio.fixture(loop_scope="session")
async def page(context: BrowserContext) -> Page:
    return await context.new_page()
