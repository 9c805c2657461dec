"""Every main page of the dashboard: its heading and tables, its forms and their 422s, the CSP it
is served with, both screen sizes, and nothing loaded from off this machine."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from lastbackend import codec
from lastbackend.model.routers import Router
from lastbackend.store import keys
from lastbackend.store.embedded import EmbeddedEtcd
from tests.browser.dashboard import (
    DESKTOP,
    PAGES,
    PHONE,
    Api,
    Sample,
    check_seen,
    fragment,
    heading,
    live,
    new_context,
    rows,
    sample,
    seen,
    sign_in,
    unique,
    visit,
)
from tests.support import RawEtcd

pytestmark = [pytest.mark.etcd, pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

NAV = ["Projects", "Vendors", "Registries", "Build tags", "System"]


@pytest.fixture(scope="module")
def shop(guarded: Api) -> Sample:
    return sample(guarded)


async def test_every_page_has_its_heading_and_the_main_navigation(
    page: Page, context: BrowserContext, guarded: Api, shop: Sample
) -> None:
    await sign_in(page, guarded)
    nav = page.get_by_role("navigation", name="Main")
    for name in NAV:
        await expect(nav.get_by_role("link", name=name, exact=True)).to_be_visible()
    for name, template in PAGES:
        await visit(page, guarded, fragment(name, shop), heading(template, shop))
    await nav.get_by_role("link", name="System", exact=True).click()
    await expect(page.get_by_role("heading", level=1, name="System")).to_be_visible()
    await expect(page.get_by_role("table", name="Nodes")).to_be_attached()
    await expect(page.get_by_role("table", name="Routers")).to_be_attached()
    await expect(page.get_by_role("table", name="Leaders")).to_be_attached()
    assert not seen(context).foreign(), "every page loads from the API alone (air-gapped)"


async def test_the_project_and_service_pages_show_their_objects(
    page: Page, guarded: Api, shop: Sample
) -> None:
    await sign_in(page, guarded)
    project_row = rows(page, "Projects").filter(has_text=shop.project)
    await project_row.get_by_role("link", name=shop.project).click()
    await expect(page).to_have_url(f"{guarded.ui}#/projects/{shop.project}")
    await expect(page.get_by_role("heading", level=1, name=shop.project)).to_be_visible()
    service_row = rows(page, "Services").filter(has_text=shop.service)
    await expect(service_row).to_have_count(1)
    await expect(service_row).to_contain_text("busybox:1.36")  # its image
    await expect(service_row.get_by_role("link", name=shop.service)).to_have_attribute(
        "href", f"#/projects/{shop.project}/services/{shop.service}"
    )
    await expect(rows(page, "Apps").filter(has_text=shop.app)).to_have_count(1)

    await visit(page, guarded, fragment("service", shop), shop.service)
    containers = page.get_by_role("table", name="Containers", exact=True)
    for column in ("Node", "Status", "Ready", "Restarts", "Ports"):
        await expect(containers.get_by_role("columnheader", name=column)).to_be_visible()
    await expect(page.get_by_role("log", name="Logs")).to_be_attached()
    await expect(page.get_by_role("table", name="Builds")).to_be_attached()
    config = page.get_by_role("form", name="Config")
    await expect(config.get_by_label("Replicas")).to_have_value("0")
    await expect(config.get_by_label("Memory")).to_have_value("32")
    for field in ("Command", "Env", "Ports", "Domains", "Health check"):
        await expect(config.get_by_label(field, exact=True)).to_be_attached()

    await visit(page, guarded, fragment("app", shop), shop.app)
    for table in ("Packages", "Droplets"):
        await expect(page.get_by_role("table", name=table)).to_be_attached()
    await expect(page.get_by_role("log", name="Staging log")).to_be_attached()
    await expect(page.get_by_label("Zip file")).to_be_attached()


async def test_a_project_made_through_the_api_appears_without_a_reload(
    page: Page, guarded: Api
) -> None:
    await sign_in(page, guarded)
    await live(page)
    await page.evaluate("() => { window.notReloaded = true; }")
    name = unique("arrives")

    guarded.call("POST", "/api/projects", {"name": name}, expect=201)

    row = rows(page, "Projects").filter(has_text=name)
    await expect(row).to_have_count(1)
    await expect(row.get_by_role("link", name=name)).to_have_attribute("href", f"#/projects/{name}")
    assert await page.evaluate("() => window.notReloaded === true"), "no reload, no navigation"
    guarded.call("DELETE", f"/api/projects/{name}", expect=204)
    await expect(row).to_have_count(0)


async def test_a_project_made_in_the_form_is_in_the_api(page: Page, guarded: Api) -> None:
    await sign_in(page, guarded)
    name = unique("formed")
    form = page.get_by_role("form", name="New project")
    await form.get_by_label("Name").fill(name)
    await form.get_by_role("button", name="Create project").click()

    await expect(rows(page, "Projects").filter(has_text=name)).to_have_count(1)
    assert guarded.call("GET", f"/api/projects/{name}")["name"] == name


async def test_a_bad_replica_count_shows_the_422_next_to_the_field(
    page: Page, guarded: Api, shop: Sample
) -> None:
    await sign_in(page, guarded)
    await visit(page, guarded, fragment("project", shop), shop.project)
    form = page.get_by_role("form", name="New service")
    await form.get_by_label("Name").fill("toomany")
    await form.get_by_label("Image").fill("busybox:1.36")
    replicas = form.get_by_label("Replicas")
    await replicas.fill("1001")
    await form.get_by_role("button", name="Create service").click()

    await expect(replicas).to_have_attribute("aria-invalid", "true")
    described = await replicas.get_attribute("aria-describedby")
    assert described, "the input names the element that explains it"
    message = "replicas must be between 0 and 1000, got 1001"
    errors = [page.locator(f"[id='{ref}']") for ref in described.split()]
    shown = [e for e in errors if "field-error" in (await e.get_attribute("class") or "")]
    assert shown, f"a .field-error among {described}"
    await expect(shown[0]).to_contain_text(message)
    await expect(shown[0]).to_be_visible()
    guarded.call("GET", f"/api/projects/{shop.project}/services/toomany", expect=404)

    await replicas.fill("0")
    await form.get_by_role("button", name="Create service").click()
    await expect(rows(page, "Services").filter(has_text="toomany")).to_have_count(1)
    await expect(replicas).not_to_have_attribute("aria-invalid", "true")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280x800", "390x844"])
async def test_every_page_fits_the_screen_width(
    browser: Browser, guarded: Api, shop: Sample, viewport: dict[str, int]
) -> None:
    context = await new_context(browser, viewport)
    try:
        page = await context.new_page()
        await sign_in(page, guarded)
        nav = page.get_by_role("navigation", name="Main")
        for name in NAV:  # every link on the screen, none pushed past its edge
            box = await nav.get_by_role("link", name=name, exact=True).bounding_box()
            assert box is not None, name
            assert 0 <= box["x"] <= box["x"] + box["width"] <= viewport["width"], (name, box)
        overflowing = {}
        for name, template in PAGES:
            await visit(page, guarded, fragment(name, shop), heading(template, shop))
            width = await page.evaluate(
                "() => [document.documentElement.scrollWidth, document.body.scrollWidth]"
            )
            if max(width) > viewport["width"]:
                overflowing[name] = width
        assert not overflowing, f"wider than {viewport['width']} px: {overflowing}"
    finally:
        await context.close()
    check_seen(context)


async def test_build_tags_show_repos_tags_and_artifacts_as_they_are_recorded(
    page: Page, guarded: Api
) -> None:
    repo = unique("repo")
    guarded.call("PUT", f"/api/repos/{repo}", {"source_url": f"https://git.example/{repo}"})
    await sign_in(page, guarded)
    await visit(page, guarded, "repos", "Build tags")
    await expect(rows(page, "Repos").filter(has_text=repo)).to_have_count(1)
    await live(page)

    tag = {
        "build_id": "4321",
        "commit_id": "5e8f1a7",
        "artifacts": {"client-jar": {"type": "file", "url": "https://files.example/c.jar"}},
    }
    guarded.call("PUT", f"/api/repos/{repo}/branches/main/tags/untested", tag)
    row = rows(page, "Tags").filter(has_text=repo)
    await expect(row).to_have_count(1)
    for shown in ("main", "untested", "4321", "client-jar"):
        await expect(row).to_contain_text(shown)


async def test_the_system_page_follows_the_routers_as_they_come_and_go(
    page: Page, guarded: Api, browser_etcd: EmbeddedEtcd
) -> None:
    """A router announces itself in system/routers/ (left out of the page-wide stream): the
    System page's own stream shows it without a reload, its error included, and drops it."""
    await sign_in(page, guarded)
    await visit(page, guarded, "system", "System")
    name = unique("edge")
    router = Router(name, "0.0.0.0:80", "0.0.0.0:443", revision=41, routes=3, error=None)
    async with RawEtcd([browser_etcd.endpoint]) as etcd:
        await etcd.put(keys.router(name), codec.dumps(router))
        row = rows(page, "Routers").filter(has_text=name)
        await expect(row).to_have_count(1)
        await expect(row).to_contain_text("0.0.0.0:443")
        refused = Router(name, "0.0.0.0:80", "0.0.0.0:443", 41, 3, error="caddy refused the config")
        await etcd.put(keys.router(name), codec.dumps(refused))
        await expect(row).to_contain_text("caddy refused the config")
        await etcd.delete_prefix(keys.router(name))
        await expect(row).to_have_count(0)
