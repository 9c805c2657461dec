"""Labels on every control and the keyboard alone: what a screen reader or a user without a
mouse needs, checked on every main page."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect

from tests.browser.dashboard import ADMIN, PAGES, Api, Sample, fragment, heading, sample, visit

pytestmark = [pytest.mark.etcd, pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

CONTROLS = ("button", "textbox", "combobox", "checkbox", "spinbutton", "radio", "link", "listbox")
UNNAMED = re.compile(rf"^\s*- ({'|'.join(CONTROLS)})\s*(\[[^\]]*\])?\s*:?\s*$")
"""An aria snapshot line of a control with no accessible name (a named one reads
``- button "Sign in"``)."""


def unnamed_controls(snapshot: str) -> list[str]:
    return [line for line in snapshot.splitlines() if UNNAMED.match(line)]


@pytest.fixture(scope="module")
def shop(guarded: Api) -> Sample:
    return sample(guarded, "labelled")


async def test_every_control_on_every_page_has_an_accessible_name(
    page: Page, guarded: Api, shop: Sample
) -> None:
    await page.goto(guarded.ui)
    unnamed = {
        "sign-in": [
            line
            for line in (await page.locator("body").aria_snapshot()).splitlines()
            if UNNAMED.match(line)
        ]
    }
    await page.get_by_label("Token").fill(ADMIN)
    await page.get_by_label("Token").press("Enter")
    await expect(page.get_by_role("heading", level=1, name="Projects")).to_be_visible()
    for name, template in PAGES:
        await visit(page, guarded, fragment(name, shop), heading(template, shop))
        unnamed[name] = unnamed_controls(await page.locator("body").aria_snapshot())
    assert not any(unnamed.values()), f"controls without a name: {unnamed}"


async def test_the_keyboard_alone_signs_in_and_opens_a_project(
    page: Page, guarded: Api, shop: Sample
) -> None:
    await page.goto(guarded.ui)
    await page.keyboard.press("Tab")
    token = page.get_by_label("Token")
    for _ in range(10):  # past the skip link and the header, to the token field
        if await token.evaluate("(el) => el === document.activeElement"):
            break
        await page.keyboard.press("Tab")
    await expect(token).to_be_focused()
    await page.keyboard.type(ADMIN)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1, name="Projects")).to_be_visible()

    link = page.get_by_role("link", name=shop.project, exact=True)
    for _ in range(200):
        await page.keyboard.press("Tab")
        if await link.evaluate("(el) => el === document.activeElement"):
            break
    await expect(link).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1, name=shop.project)).to_be_visible()
