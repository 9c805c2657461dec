"""The dashboard on a whole platform: ``lastbackend daemon`` with its controllers and a node agent
on the real Docker engine. A service made in the form has its containers appear in the page as
the agent reports them; a zip dropped on an app's page stages, its log followed live to STAGED.

Nothing is pulled: the service runs the offline busybox image of the e2e tests, made to serve
``/www`` (:func:`served_image`), and staging uses the busybox stack built from busybox-static.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import re
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest
import pytest_asyncio
from playwright.async_api import Page, expect

from tests.browser.dashboard import (
    ADMIN,
    Api,
    ensure_served_image,
    live,
    rows,
    sign_in,
    token_flags,
    unique,
    visit,
)
from tests.conftest import new_etcd_server
from tests.e2e.conftest import (  # the engine and the offline images, as the e2e tests have them
    api_client,
    base_image,  # noqa: F401
    busybox_stack,  # noqa: F401
    dockerd,  # noqa: F401
)
from tests.e2e.harness import Harness
from tests.integration.test_daemon import Daemon
from tests.support import free_port

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.docker,
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="session"),
]

SITE = b"<h1>hello from the dashboard</h1>\n"


@pytest.fixture(scope="module")
def served_image(dockerd: str, base_image: str) -> str:  # noqa: F811
    with contextlib.closing(api_client(dockerd)) as api:
        return ensure_served_image(api, base_image)


@pytest.fixture(scope="module")
def engine(dockerd: str) -> Iterator[docker.APIClient]:  # noqa: F811
    with contextlib.closing(api_client(dockerd)) as api:
        yield api


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def platform(
    tmp_path_factory: pytest.TempPathFactory,
    dockerd: str,  # noqa: F811
    base_image: str,  # noqa: F811
    busybox_stack: str,  # noqa: F811
    engine: docker.APIClient,
) -> AsyncIterator[tuple[Api, Harness]]:
    """``lastbackend daemon`` (API, controllers, this host's node agent; no router) with the
    tokens, on an etcd of its own; its containers and droplet images go at the end."""
    tmp = tmp_path_factory.mktemp("platform")
    etcd = new_etcd_server(tmp)
    etcd.start()
    harness = Harness(tmp, dockerd, engine)
    port = free_port()
    argv = ["daemon", "--etcd", etcd.endpoint, "--listen", f"127.0.0.1:{port}"]
    argv += ["--data-dir", str(tmp / "data"), "--name", harness.node, "--no-router"]
    daemon = Daemon(tmp, [*argv, *token_flags()], port, env=harness.env())
    try:
        daemon.wait_ready(60)
        yield Api(daemon, ADMIN), harness
    finally:
        daemon.cleanup()
        harness.cleanup()
        etcd.stop()


async def test_a_service_made_in_the_form_shows_its_containers_as_they_start(
    page: Page, platform: tuple[Api, Harness], served_image: str
) -> None:
    api, harness = platform
    project = unique("live")
    api.call("POST", "/api/projects", {"name": project}, expect=201)
    await sign_in(page, api)
    await visit(page, api, f"projects/{project}", project)
    await live(page)
    await page.evaluate("() => { window.notReloaded = true; }")

    form = page.get_by_role("form", name="New service")
    await form.get_by_label("Name").fill("web")
    await form.get_by_label("Image").fill(served_image)
    await form.get_by_label("Replicas").fill("2")
    await form.get_by_role("button", name="Create service").click()
    await rows(page, "Services").filter(has_text="web").get_by_role("link", name="web").click()
    await expect(page.get_by_role("heading", level=1, name="web")).to_be_visible()

    containers = rows(page, "Containers")
    await expect(containers.filter(has_text="running")).to_have_count(2, timeout=60_000)
    await expect(containers.filter(has_text=harness.node)).to_have_count(2)
    assert await page.evaluate("() => window.notReloaded === true"), "they came live"
    running = harness.running()
    assert len(running) == 2, harness.explain()
    for container in running:
        await expect(containers.filter(has_text=container["Id"][:12])).to_have_count(1)

    base = f"/api/projects/{project}/services/web"
    api.call("PATCH", f"{base}/config", {"replicas": 1}, expect=200)
    await expect(containers).to_have_count(1, timeout=60_000)

    # a second revision whose container logs a line: the page follows it live; then back to
    # the first revision from the Rollback control
    command = "echo logged by revision 2; exec sleep 3600"
    api.call("PATCH", f"{base}/config", {"command": command}, expect=200)
    choice = page.get_by_role("group", name="Rollback").get_by_label("Revision")
    await expect(choice.locator("option[value='2']")).to_be_attached(timeout=30_000)
    logs = page.get_by_role("log", name="Logs")
    await expect(logs).to_contain_text("logged by revision 2", timeout=30_000)
    await choice.select_option("1")
    await page.get_by_role("button", name="Rollback", exact=True).click()
    await expect(page.get_by_role("alert")).to_have_count(0)
    for _ in range(100):
        if api.call("GET", f"{base}/config")["command"] == "":
            break
        await asyncio.sleep(0.1)
    assert api.call("GET", f"{base}/config")["command"] == "", "rolled back to revision 1"


async def test_the_system_page_shows_the_node_agent_and_the_leaders(
    page: Page, platform: tuple[Api, Harness]
) -> None:
    api, harness = platform
    await sign_in(page, api)
    await visit(page, api, "system", "System")
    node = rows(page, "Nodes").filter(has_text=harness.node)
    await expect(node).to_have_count(1)
    await expect(node).to_contain_text("ready")
    for controller in ("services", "gc", "staging", "builds", "events"):
        await expect(rows(page, "Leaders").filter(has_text=controller)).not_to_have_count(0)


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


async def test_a_zip_dropped_on_the_app_page_stages_and_its_log_follows_to_staged(
    page: Page, platform: tuple[Api, Harness], tmp_path: Path
) -> None:
    api, harness = platform
    project = api.call("POST", "/api/projects", {"name": unique("staged")}, expect=201)
    app = api.call(
        "POST",
        "/v3/apps",
        {"name": "site", "relationships": {"space": {"guid": project["id"]}}},
        expect=201,
    )
    await sign_in(page, api)
    await visit(page, api, f"apps/{app['guid']}", "site")
    await live(page)

    archive = zip_of({"index.html": SITE})
    dropped = await page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "site.zip", {type: "application/zip"}));
            return data;
        }""",
        base64.b64encode(archive).decode(),
    )
    zone = page.get_by_label("Upload a zip", exact=True)
    for event in ("dragenter", "dragover", "drop"):
        await zone.dispatch_event(event, {"dataTransfer": dropped})
    await page.get_by_role("button", name="Upload and stage").click()

    log = page.get_by_role("log", name="Staging log")
    await expect(log).to_contain_text("-----> Exporting", timeout=120_000)
    droplets = rows(page, "Droplets")
    await expect(droplets.filter(has_text="STAGED")).to_have_count(1, timeout=30_000)
    await expect(rows(page, "Packages").filter(has_text="READY")).to_have_count(1)

    staged = api.call("GET", f"/v3/apps/{app['guid']}/droplets")["resources"]
    assert [d["state"] for d in staged] == ["STAGED"], staged
    harness.images += [d["image"] for d in staged if d.get("image") and "@" not in d["image"]]

    # assign the droplet and start the app from the page: one instance comes up, then stop it
    await page.get_by_role("button", name=re.compile(r"^Assign droplet ")).click()
    await expect(droplets.filter(has_text="current")).to_have_count(1)
    await page.get_by_role("button", name="Start", exact=True).click()
    await expect(page.get_by_text("1/1 ready")).to_be_visible(timeout=60_000)
    assert api.call("GET", f"/v3/apps/{app['guid']}")["desired_state"] == "STARTED"
    await page.get_by_role("button", name="Stop", exact=True).click()
    await expect(page.get_by_text("STOPPED", exact=True)).to_be_visible()
