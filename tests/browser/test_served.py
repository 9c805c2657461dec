"""What the API sends with the dashboard's page: a strict Content-Security-Policy, so a script
injected into a page (a service's name, a log line) can neither run nor reach another origin."""

from __future__ import annotations

import urllib.request

import pytest

from tests.browser.dashboard import Api

pytestmark = [pytest.mark.etcd]


def test_the_ui_is_served_with_a_strict_content_security_policy(guarded: Api) -> None:
    with urllib.request.urlopen(guarded.ui, timeout=5) as resp:
        policy = resp.headers.get("Content-Security-Policy", "")
        assert resp.status == 200
    directives = {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}
    assert directives.get("default-src") in (["'self'"], ["'none'"]), policy
    for directive in ("script-src", "style-src", "connect-src", "img-src", "font-src"):
        sources = directives.get(directive, directives.get("default-src", []))
        assert all(s in ("'self'", "'none'", "data:", "blob:") for s in sources), (
            f"{directive}: only this origin ({policy})"
        )
    assert "'unsafe-inline'" not in directives.get("script-src", [])
    assert "'unsafe-eval'" not in policy
    assert directives.get("frame-ancestors") == ["'none'"], policy
    assert directives.get("object-src", directives.get("default-src")) in (["'none'"], ["'self'"])
