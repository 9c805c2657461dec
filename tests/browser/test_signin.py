"""Signing in to the dashboard: a bearer token kept for the tab, never a cookie."""

from __future__ import annotations

import pytest
from playwright.async_api import BrowserContext, Page, expect

from tests.browser.dashboard import ADMIN, UNAUTHORIZED, Api, live, seen, sign_in

pytestmark = [pytest.mark.etcd, pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


async def test_sign_in_keeps_the_token_for_the_tab_and_sends_it_as_a_bearer_header(
    page: Page, context: BrowserContext, guarded: Api
) -> None:
    """Before sign-in the page may ask ``/api/whoami`` whether a token is needed at all; from
    the click on, and after a reload of the tab, every API request carries the token."""
    await page.goto(guarded.ui)
    form = page.get_by_role("form", name="Sign in")
    await form.get_by_label("Token").fill(ADMIN)
    clicked = len(seen(context).requests)
    await form.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", level=1, name="Projects")).to_be_visible()
    await live(page)
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    reloaded = len(seen(context).requests)
    await page.reload()
    await live(page)

    stored = await page.evaluate(
        "() => Object.keys(sessionStorage).map((k) => sessionStorage.getItem(k))"
    )
    assert ADMIN in stored, "the token is kept in sessionStorage"
    assert await page.evaluate("() => Object.values(localStorage)") == [], "not beyond the tab"
    assert await context.cookies() == [], "no cookie: a cookie would be sent by any page's form"
    assert ADMIN not in await page.content(), "the token is never shown in the page"
    assert ADMIN not in page.url, "nor put in the address bar (history, Referer)"

    after = seen(context).requests[clicked:]
    api_calls = [r for r in after if "/api/" in r.url or "/v3/" in r.url]
    assert any(r for r in seen(context).requests[reloaded:] if "/api/" in r.url), "reloaded"
    assert api_calls, "the page called the API"
    for request in api_calls:
        headers = await request.all_headers()
        assert headers.get("authorization") == f"Bearer {ADMIN}", request.url
        assert "cookie" not in headers, request.url


async def test_a_wrong_token_shows_the_apis_401_and_stays_signed_out(
    page: Page, guarded: Api
) -> None:
    await page.goto(guarded.ui)
    form = page.get_by_role("form", name="Sign in")
    await form.get_by_label("Token").fill("not-the-token")
    await form.get_by_role("button", name="Sign in").click()

    await expect(page.get_by_role("alert")).to_contain_text(UNAUTHORIZED)
    await expect(page.get_by_role("heading", level=1, name="Projects")).to_have_count(0)
    assert "not-the-token" not in await page.evaluate(
        "() => Object.values(sessionStorage).join(' ')"
    ), "a refused token is not kept"


async def test_sign_out_forgets_the_token(page: Page, guarded: Api) -> None:
    await sign_in(page, guarded)
    await page.get_by_role("button", name="Sign out").click()

    await expect(page.get_by_role("form", name="Sign in")).to_be_visible()
    assert ADMIN not in await page.evaluate("() => Object.values(sessionStorage).join(' ')")
    await page.reload()
    await expect(page.get_by_role("form", name="Sign in")).to_be_visible()


async def test_the_token_lasts_a_reload_of_the_tab(page: Page, guarded: Api) -> None:
    await sign_in(page, guarded)
    await page.reload()
    await expect(page.get_by_role("heading", level=1, name="Projects")).to_be_visible()
    await expect(page.get_by_role("form", name="Sign in")).to_have_count(0)


async def test_with_no_token_configured_the_form_is_skipped(page: Page, open_api: Api) -> None:
    await page.goto(open_api.ui)
    await expect(page.get_by_role("heading", level=1, name="Projects")).to_be_visible()
    await live(page)
    await expect(page.get_by_role("form", name="Sign in")).to_have_count(0)
    await expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    await expect(page.get_by_role("button", name="Create project")).to_be_visible()
