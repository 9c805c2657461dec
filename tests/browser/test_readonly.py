"""A read-only token: the same pages, no control that writes, and a refused write shows its 403."""

from __future__ import annotations

import pytest
from playwright.async_api import Page, Route, expect

from tests.browser.dashboard import (
    PAGES,
    READ_ONLY,
    READER,
    WRITE_CONTROLS,
    WRITE_PREFIXES,
    Api,
    Sample,
    fragment,
    heading,
    rows,
    sample,
    sign_in,
    unique,
    visit,
)

pytestmark = [pytest.mark.etcd, pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture(scope="module")
def shop(guarded: Api) -> Sample:
    """The sample, and a registry account and a vendor, so those pages have rows whose
    delete or disconnect button a read-only token must not get."""
    account = {"host": "registry.readable.test", "username": "ci", "password": "pw-0123"}
    guarded.call("POST", "/api/registries", account, expect=201)
    guarded.call("PUT", "/api/vendors/gitlab", {"username": "ci", "token": "glpat-0123"})
    return sample(guarded, "readable")


async def test_a_read_only_token_sees_every_page_and_no_write_control(
    page: Page, guarded: Api, shop: Sample
) -> None:
    await sign_in(page, guarded, READER)
    await expect(page.locator("header").get_by_text("Read-only")).to_be_visible()
    await expect(rows(page, "Projects").filter(has_text=shop.project)).to_have_count(1)
    found = {}
    for name, template in PAGES:
        await visit(page, guarded, fragment(name, shop), heading(template, shop))
        for role, label in WRITE_CONTROLS:
            count = await page.get_by_role(role, name=label, exact=True).count()  # type: ignore[arg-type]
            if count:
                found.setdefault(name, []).append(f"{role} {label!r}")
        if await page.get_by_label("Zip file").count():
            found.setdefault(name, []).append("file input 'Zip file'")
        for button in await page.get_by_role("button", name=WRITE_PREFIXES).all():
            found.setdefault(name, []).append(f"button {await button.inner_text()!r}")
    assert not found, f"write controls shown to a read-only token: {found}"
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()


async def test_a_write_the_api_refuses_shows_its_403_and_writes_nothing(
    page: Page, guarded: Api
) -> None:
    """An admin's tab whose token the operator has since made read-only: the page still offers
    the form, and the API's answer is what the user must see. The request goes to the real API;
    only its Authorization is swapped for the read-only token on the way."""
    await sign_in(page, guarded)
    name = unique("refused")

    async def as_reader(route: Route) -> None:
        if route.request.method == "POST":
            headers = {**route.request.headers, "authorization": f"Bearer {READER}"}
            await route.continue_(headers=headers)
        else:
            await route.continue_()

    await page.route("**/api/projects", as_reader)
    form = page.get_by_role("form", name="New project")
    await form.get_by_label("Name").fill(name)
    await form.get_by_role("button", name="Create project").click()

    await expect(page.get_by_role("alert")).to_contain_text(READ_ONLY)
    await expect(rows(page, "Projects").filter(has_text=name)).to_have_count(0)
    guarded.call("GET", f"/api/projects/{name}", expect=404)  # nothing was written
