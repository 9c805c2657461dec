"""Screenshots of each main page of the dashboard at 1280x800 and 390x844, into ``docs/img/``.

The data is a small platform made the way a user makes it, on this machine's Docker engine with
nothing pulled: ``lastbackend daemon`` (API with an admin token, controllers, this host's node
agent; no router) on a private etcd; a project ``shop`` with a service ``web`` (two replicas of
the offline busybox image serving ``/www``) and a ``worker``, an app ``site`` pushed with
``lastbackend push`` (staged with the busybox stack, started), two more projects, two connected
vendors, a registry account and a repository's build tags. Then Chromium signs in at each size and
photographs the sign-in form and every page (the viewport, as a user sees it first).

Run from the repository root (needs ``etcd``, Docker, busybox-static and ``/usr/bin/chromium``)::

    .venv/bin/python tests/browser/screenshots.py     # ~1 minute; writes docs/img/dashboard-*.png

Everything it started and every container and droplet image it made is removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

from playwright.async_api import Browser, async_playwright, expect

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lastbackend.store.embedded import EmbeddedEtcd
from tests.baseimage import BASE_IMAGE, ensure_base_image
from tests.browser.dashboard import (
    ADMIN,
    CHROMIUM,
    DESKTOP,
    PAGES,
    PHONE,
    Api,
    Sample,
    ensure_served_image,
    fragment,
    heading,
    live,
    new_context,
    rows,
    sign_in,
    token_flags,
)
from tests.e2e.conftest import DEFAULT_URL, api_client
from tests.e2e.harness import SERVE, Harness, eventually
from tests.integration.test_daemon import Daemon
from tests.support import free_port, run_cli

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "docs" / "img"
SIZES = {"desktop": DESKTOP, "phone": PHONE}


def visit_page(url: str) -> None:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5):
        pass


async def seed(api: Api, harness: Harness, served: str, home: Path) -> Sample:
    """The platform the pictures show; the :class:`Sample` of its pages."""
    for name, description in (
        ("shop", "The web shop: storefront, order worker and the landing site"),
        ("blog", "Company blog"),
        ("internal-tools", "Dashboards for the support team"),
    ):
        api.call("POST", "/api/projects", {"name": name, "description": description}, expect=201)
    web = {
        "image": served,
        "command": f"echo serving /www on :8080; {SERVE.replace('httpd -f', 'httpd -f -v')}",
        "replicas": 2,
        "memory": 64,
        "ports": {"8080/TCP": 0},
        "env": {"GREETING": "hello", "LOG_LEVEL": "info"},
    }
    api.call("POST", "/api/projects/shop/services", {"name": "web", "config": web}, expect=201)
    worker = {
        "image": served,
        "replicas": 1,
        "memory": 32,
        "command": "while true; do echo processed order $RANDOM; sleep 3; done",
    }
    api.call(
        "POST", "/api/projects/shop/services", {"name": "worker", "config": worker}, expect=201
    )
    api.call(
        "POST",
        "/api/projects/blog/services",
        {"name": "ghost", "config": {"image": "ghost:5", "replicas": 0, "memory": 256}},
        expect=201,
    )
    for vendor, user in (("github", "shop-ci"), ("gitlab", "shop-ci")):
        body = {"username": user, "token": f"{vendor}-token-not-shown"}
        api.call("PUT", f"/api/vendors/{vendor}", body, expect=201)
    api.call(
        "POST",
        "/api/registries",
        {"host": "registry.example.com", "username": "deploy", "password": "not-shown"},
        expect=201,
    )
    api.call("PUT", "/api/repos/qpid-jms", {"source_url": "https://github.com/apache/qpid-jms"})
    for tag, build in (("untested", "1234"), ("tested", "1230")):
        body = {
            "build_id": build,
            "build_url": f"https://ci.example.com/job/qpid-jms/{build}",
            "commit_id": "5e8f1a7",
            "artifacts": {
                "qpid-jms-client": {
                    "type": "maven",
                    "repository_url": "https://repo.example.com/maven2",
                    "group_id": "org.apache.qpid",
                    "artifact_id": "qpid-jms-client",
                    "version": "0.40.0",
                }
            },
        }
        api.call("PUT", f"/api/repos/qpid-jms/branches/main/tags/{tag}", body)

    site = home / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>hello from the shop</h1>\n")
    env = {"LB_URL": api.url, "LB_TOKEN": ADMIN, "LB_DEFAULT_STACK": "busybox"}
    code, out, err = await run_cli("push", "-p", str(site), "--project", "shop", home=home, env=env)
    assert code == 0, f"push: {out}\n{err}"
    app = next(a for a in api.call("GET", "/v3/apps")["resources"] if a["name"] == "site")
    for droplet in api.call("GET", f"/v3/apps/{app['guid']}/droplets")["resources"]:
        if droplet.get("image") and "@" not in droplet["image"]:
            harness.images.append(droplet["image"])

    def running() -> bool:
        listed = api.call("GET", "/api/projects/shop/services/web/containers")["resources"]
        return sum(c["status"] == "running" and bool(c.get("ready")) for c in listed) == 2

    await eventually(running, 60, "web's two containers running", explain=harness.explain)
    listed = api.call("GET", "/api/projects/shop/services/web/containers")["resources"]
    for container in listed * 3:  # a few requests, for the access log the service page follows
        visit_page(f"http://127.0.0.1:{container['ports']['8080/TCP']}/")
    return Sample(project="shop", service="web", app="site", app_guid=app["guid"])


async def photograph(browser: Browser, api: Api, shop: Sample) -> list[Path]:
    written = []
    OUT.mkdir(parents=True, exist_ok=True)
    for size, viewport in SIZES.items():
        context = await new_context(browser, viewport)
        try:
            page = await context.new_page()
            await page.goto(api.ui)
            await expect(page.get_by_role("form", name="Sign in")).to_be_visible()
            written.append(OUT / f"dashboard-sign-in-{size}.png")
            await page.screenshot(path=written[-1], animations="disabled", caret="hide")
            await sign_in(page, api)
            for name, template in PAGES:
                await page.goto(f"{api.ui}#/{fragment(name, shop)}")
                title = heading(template, shop)
                await expect(page.get_by_role("heading", level=1, name=title)).to_be_visible()
                await live(page)
                if name == "service":
                    await expect(rows(page, "Containers")).to_have_count(2)
                    logs = page.get_by_role("log", name="Logs")
                    await expect(logs).to_contain_text("response:200")
                if name == "app":
                    await expect(rows(page, "Droplets").filter(has_text="STAGED")).to_have_count(1)
                with contextlib.suppress(Exception):  # a page whose requests never settle
                    await page.wait_for_load_state("networkidle", timeout=3000)
                written.append(OUT / f"dashboard-{name}-{size}.png")
                await page.screenshot(path=written[-1], animations="disabled", caret="hide")
        finally:
            await context.close()
    return written


async def main() -> None:
    for binary in ("etcd", "busybox"):
        if shutil.which(binary) is None:
            raise SystemExit(f"{binary} is not installed (scripts/bootstrap.sh installs it)")
    with (
        tempfile.TemporaryDirectory(prefix="lb-screenshots-") as tmp,
        contextlib.closing(api_client(DEFAULT_URL)) as engine,
    ):
        base = Path(tmp)
        ensure_base_image(engine)
        served = ensure_served_image(engine, BASE_IMAGE)
        etcd = EmbeddedEtcd(
            base / "etcd",
            client=f"127.0.0.1:{free_port()}",
            peer=f"127.0.0.1:{free_port()}",
            log=base / "etcd.log",
        )
        etcd.start()
        harness = Harness(base, DEFAULT_URL, engine)
        harness.node = f"docker-host-{secrets.token_hex(2)}"  # its containers' label, as shown
        port = free_port()
        argv = ["daemon", "--etcd", etcd.endpoint, "--listen", f"127.0.0.1:{port}"]
        argv += ["--data-dir", str(base / "data"), "--name", harness.node, "--no-router"]
        daemon = Daemon(base, [*argv, *token_flags()], port, env=harness.env())
        try:
            daemon.wait_ready(60)
            api = Api(daemon, ADMIN)
            print("seeding ...", file=sys.stderr)
            shop = await seed(api, harness, served, base)
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM)
                try:
                    written = await photograph(browser, api, shop)
                finally:
                    await browser.close()
            for path in written:
                print(path.relative_to(REPO))
        finally:
            daemon.cleanup()
            harness.cleanup()
            etcd.stop()


if __name__ == "__main__":
    asyncio.run(main())
