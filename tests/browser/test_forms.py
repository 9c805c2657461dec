"""Forms that write: the service's Config (a 422 next to its field, a good save in the API), and
the secrets of registries and vendors, entered and never shown again."""

from __future__ import annotations

import pytest
from playwright.async_api import Locator, Page, expect

from tests.browser.dashboard import Api, Sample, fragment, rows, sample, sign_in, unique, visit

pytestmark = [pytest.mark.etcd, pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture(scope="module")
def shop(guarded: Api) -> Sample:
    return sample(guarded, "configured")


async def field_error(page: Page, control: Locator) -> Locator:
    """The ``.field-error`` among the elements ``control``'s aria-describedby names."""
    await expect(control).to_have_attribute("aria-invalid", "true")
    described = await control.get_attribute("aria-describedby") or ""
    for ref in described.split():
        candidate = page.locator(f"[id='{ref}']")
        if "field-error" in (await candidate.get_attribute("class") or ""):
            return candidate
    raise AssertionError(f"no .field-error among aria-describedby={described!r}")


async def test_the_config_form_shows_a_422_by_its_field_then_saves(
    page: Page, guarded: Api, shop: Sample
) -> None:
    await sign_in(page, guarded)
    await visit(page, guarded, fragment("service", shop), shop.service)
    config = page.get_by_role("form", name="Config")
    memory = config.get_by_label("Memory")
    await memory.fill("1")
    await config.get_by_role("button", name="Save config").click()

    error = await field_error(page, memory)
    await expect(error).to_contain_text("memory (MB) must be between 6")
    path = f"/api/projects/{shop.project}/services/{shop.service}"
    assert guarded.call("GET", f"{path}/config")["memory"] == 32, "nothing was written"

    await memory.fill("48")
    await config.get_by_label("Command").fill("sleep 3600")
    await config.get_by_role("button", name="Save config").click()
    await expect(config.get_by_role("status")).to_contain_text("Saved")
    await expect(memory).not_to_have_attribute("aria-invalid", "true")
    await expect(memory).to_have_value("48")
    saved = guarded.call("GET", f"{path}/config")
    assert (saved["memory"], saved["command"]) == (48, "sleep 3600"), saved


async def test_a_registry_password_is_entered_and_never_shown(page: Page, guarded: Api) -> None:
    await sign_in(page, guarded)
    await visit(page, guarded, "registries", "Registries")
    host, password = f"{unique('registry')}.test:5000", "pw-never-shown-7f3a"
    form = page.get_by_role("form", name="New registry account")
    await form.get_by_label("Host").fill(host)
    await form.get_by_label("Username").fill("deploy")
    await expect(form.get_by_label("Password")).to_have_attribute("type", "password")
    await form.get_by_label("Password").fill(password)
    await form.get_by_role("button", name="Add account").click()

    await expect(rows(page, "Registries").filter(has_text=host)).to_have_count(1)
    await expect(form.get_by_label("Password")).to_have_value("")
    assert password not in await page.content(), "the page never shows it back"
    await page.reload()
    await expect(rows(page, "Registries").filter(has_text=host)).to_have_count(1)
    assert password not in await page.content()
    stored = guarded.call("GET", f"/api/registries/{host}")
    assert stored["password"] == "***", stored


async def test_a_vendor_token_is_entered_and_never_shown(page: Page, guarded: Api) -> None:
    await sign_in(page, guarded)
    await visit(page, guarded, "vendors", "Vendors")
    token = "ghp_never-shown-0b1c2d"
    form = page.get_by_role("form", name="Connect a vendor")
    await form.get_by_label("Vendor").select_option("bitbucket")
    await form.get_by_label("Username").fill("shop-ci")
    await expect(form.get_by_label("Token", exact=True)).to_have_attribute("type", "password")
    await form.get_by_label("Token", exact=True).fill(token)
    await form.get_by_role("button").click()

    await expect(page.get_by_role("button", name="Disconnect bitbucket")).to_be_visible()
    assert token not in await page.content()
    assert guarded.call("GET", "/api/vendors/bitbucket")["token"] == "***"
