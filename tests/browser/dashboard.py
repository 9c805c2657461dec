"""What the browser tests, the dashboard benchmark and the screenshot script share: the API
processes they start, the tokens, a recording browser context, and what a user does in a page
(sign in, go to a page, read a table's rows), by the accessible names of the UI contract
(docs/dashboard.md), never by CSS classes or ids.
"""

from __future__ import annotations

import json
import re
import secrets
import urllib.parse
from pathlib import Path
from typing import Any

import attrs
import docker
import docker.errors
from playwright.async_api import Browser, BrowserContext, Locator, Page, Request, expect

from lastbackend.store.embedded import EmbeddedEtcd
from tests.e2e.harness import SERVE
from tests.integration.test_daemon import Daemon
from tests.support import TEST_KEY, free_port

CHROMIUM = "/usr/bin/chromium"
ADMIN = f"admin-{secrets.token_urlsafe(24)}"
READER = f"reader-{secrets.token_urlsafe(24)}"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
UNAUTHORIZED = "the bearer token is not valid"
READ_ONLY = "this token is read-only; writes need an admin token"

expect.set_options(timeout=10_000)


# processes --------------------------------------------------------------------------------------


def spawn_api(tmp: Path, etcd: EmbeddedEtcd, *flags: str, port: int | None = None) -> Daemon:
    """``lastbackend api`` on ``etcd`` with ``flags``, just started (``wait_ready`` next)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = ["api", "--etcd", etcd.endpoint, "--listen", f"127.0.0.1:{port}"]
    argv += ["--data-dir", str(tmp / "data"), *flags]
    return Daemon(tmp, argv, port, env={"LB_SECRET_KEY": TEST_KEY})


def start_api(tmp: Path, etcd: EmbeddedEtcd, *flags: str, port: int | None = None) -> Daemon:
    """:func:`spawn_api`, once ``/readyz`` answers 200."""
    daemon = spawn_api(tmp, etcd, *flags, port=port)
    try:
        daemon.wait_ready()
    except BaseException:
        daemon.cleanup()
        raise
    return daemon


def token_flags(admin: str = ADMIN, reader: str = READER) -> list[str]:
    return ["--token", admin, "--read-token", reader]


@attrs.define
class Api:
    """One API process and the token a test calls it with (a user's curl, beside the page)."""

    daemon: Daemon
    token: str = ""

    @property
    def url(self) -> str:
        return self.daemon.url

    @property
    def ui(self) -> str:
        return f"{self.daemon.url}/ui/"

    def call(self, method: str, path: str, body: Any = None, *, expect: int | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        status, answer = self.daemon.request(method, path, body, headers=headers, timeout=10)
        if expect is not None:
            assert status == expect, f"{method} {path} -> {status} {answer}"
        return answer


def unique(prefix: str) -> str:
    """A DNS-label name no other test of the session uses (they share one etcd)."""
    return f"{prefix}-{secrets.token_hex(3)}"


@attrs.define
class Seen:
    """What a context did that a user would notice or an air-gapped install would break on."""

    requests: list[Request] = attrs.Factory(list)
    errors: list[str] = attrs.Factory(list)

    def foreign(self) -> list[str]:
        """Request URLs to anything but this machine (``data:`` and ``blob:`` stay in the page)."""
        return [r.url for r in self.requests if not local(r.url)]


def local(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return parts.scheme in ("http", "https", "ws", "wss") and parts.hostname in (
        "127.0.0.1",
        "localhost",
        "::1",
    )


async def new_context(browser: Browser, viewport: dict[str, int] = DESKTOP) -> BrowserContext:
    """A context whose pages record into ``context.seen`` (a :class:`Seen`)."""
    context = await browser.new_context(viewport=viewport)
    context.set_default_timeout(10_000)
    seen = Seen()
    context.seen = seen  # type: ignore[attr-defined]
    context.on("request", lambda request: seen.requests.append(request))

    def watch(page: Page) -> None:
        page.on("pageerror", lambda exc: seen.errors.append(f"script error: {exc}"))
        page.on(
            "console",
            lambda msg: (
                seen.errors.append(f"console: {msg.text}")
                if msg.type == "error" and "Content Security Policy" in msg.text
                else None
            ),
        )

    context.on("page", watch)
    return context


def seen(context: BrowserContext) -> Seen:
    found: Seen = context.seen  # type: ignore[attr-defined]
    return found


def check_seen(context: BrowserContext) -> None:
    """Fail on a request off this machine, a script error or a CSP violation."""
    record = seen(context)
    assert not record.foreign(), f"the dashboard reached off this machine: {record.foreign()}"
    assert not record.errors, f"the page reported: {record.errors}"


# what a user does -------------------------------------------------------------------------------


async def sign_in(page: Page, api: Api, token: str = ADMIN) -> None:
    """Open the dashboard and sign in with ``token`` (the form is skipped with no token set)."""
    await page.goto(api.ui)
    form = page.get_by_role("form", name="Sign in")
    await form.get_by_label("Token").fill(token)
    await form.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", level=1, name="Projects")).to_be_visible()


async def live(page: Page) -> None:
    """Wait until the page follows the event stream."""
    stream = page.get_by_role("status", name="Event stream")
    await expect(stream).to_have_attribute("data-state", "live")


async def visit(page: Page, api: Api, fragment: str, heading: str) -> None:
    """Go to ``#/<fragment>`` in the signed-in tab and wait for its ``h1``."""
    await page.goto(f"{api.ui}#/{fragment}")
    await expect(page.get_by_role("heading", level=1, name=heading, exact=True)).to_be_visible()


def rows(page: Page, table: str) -> Locator:
    """The body rows of the table named ``table``."""
    return page.get_by_role("table", name=table, exact=True).locator("tbody tr")


@attrs.frozen
class Apis:
    guarded: Api
    open: Api


@attrs.frozen
class Sample:
    """One of each kind of page's object, made through the API (see :func:`sample`)."""

    project: str
    service: str
    app: str
    app_guid: str


def sample(api: Api, prefix: str = "shop") -> Sample:
    """A project with a service (no replicas: no engine runs here) and a ``/v3`` app."""
    project = unique(prefix)
    body = api.call("POST", "/api/projects", {"name": project}, expect=201)
    api.call(
        "POST",
        f"/api/projects/{project}/services",
        {"name": "web", "config": {"image": "busybox:1.36", "replicas": 0, "memory": 32}},
        expect=201,
    )
    app = api.call(
        "POST",
        "/v3/apps",
        {"name": "site", "relationships": {"space": {"guid": body["id"]}}},
        expect=201,
    )
    return Sample(project=project, service="web", app="site", app_guid=app["guid"])


PAGES: list[tuple[str, str]] = [
    ("projects", "Projects"),
    ("project", "{project}"),
    ("service", "{service}"),
    ("app", "{app}"),
    ("vendors", "Vendors"),
    ("registries", "Registries"),
    ("repos", "Build tags"),
    ("system", "System"),
]
"""Every main page: its name and its ``h1`` (formatted with a :class:`Sample`)."""


def fragment(name: str, s: Sample) -> str:
    return {
        "projects": "projects",
        "project": f"projects/{s.project}",
        "service": f"projects/{s.project}/services/{s.service}",
        "app": f"apps/{s.app_guid}",
    }.get(name, name)


def heading(template: str, s: Sample) -> str:
    return template.format(**attrs.asdict(s))


WRITE_CONTROLS = [
    ("button", "Create project"),
    ("form", "New project"),
    ("button", "Create service"),
    ("form", "New service"),
    ("button", "Save config"),
    ("button", "Start"),
    ("button", "Stop"),
    ("button", "Upload and stage"),
    ("button", "Rollback"),
    ("form", "New registry account"),
    ("button", "Add account"),
    ("form", "Connect a vendor"),
]
"""The controls that write: a read-only token must see none of them on any page (nor a button
named ``Delete ...`` or ``Disconnect ...``: :data:`WRITE_PREFIXES`)."""
WRITE_PREFIXES = re.compile(r"^(Delete|Disconnect|Remove|Assign)\b")


SERVED = "lastbackend-test/busybox-served:1"


def ensure_served_image(api: docker.APIClient, base_image: str) -> str:
    """:data:`SERVED`: the e2e tests' offline base image with a ``CMD`` serving ``/www`` on 8080,
    since the New service form names an image and no command. Committed once, then kept on the
    engine like the base image."""
    try:
        api.inspect_image(SERVED)
    except docker.errors.ImageNotFound:
        scratch = api.create_container(base_image, command="true")["Id"]
        try:
            repository, tag = SERVED.rsplit(":", 1)
            api.commit(
                scratch,
                repository=repository,
                tag=tag,
                changes=[f"CMD {json.dumps(['sh', '-c', SERVE])}", "EXPOSE 8080/tcp"],
            )
        finally:
            api.remove_container(scratch, force=True)
    return SERVED
