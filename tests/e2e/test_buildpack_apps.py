"""Real apps on the debian stack, as a user pushes them: ``lastbackend daemon`` with its router.

A Flask app and an Express app go through ``/v3`` (upload, stage, start) and answer at their
service's URL through the router (Caddy). pip and npm reach the real registries with the host's
CA bundle and proxies, as the staging controller hands them out. The Flask app is staged again
unchanged (its ``venv`` layer is restored and reused: pip does not run), then with a changed
``requirements.txt`` (pip runs again), and with a requirement that does not exist (the droplet's
``error`` and its staging log quote pip).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lastbackend.store.embedded import EmbeddedEtcd
from tests.e2e.harness import Harness, Proc, eventually
from tests.e2e.test_apps import V3, zip_of
from tests.e2e.test_debian_stack import EXPRESS_APP, FLASK_APP
from tests.e2e.test_routing import through
from tests.support import RawEtcd, free_ports

pytestmark = [pytest.mark.docker, pytest.mark.etcd]

STAGING_S = 600
"""A cold staging downloads from PyPI or npm: minutes on a slow proxy, not seconds."""


async def daemon_on_debian(h: Harness, etcd: str) -> tuple[Proc, int, V3]:
    """A daemon with its router whose default stack is debian (the harness's is busybox)."""
    if shutil.which("caddy") is None:
        pytest.skip("caddy is not installed (Debian: caddy)")
    port, https = free_ports(2)
    router = ("--router-http", f"127.0.0.1:{port}", "--router-https", f"127.0.0.1:{https}")
    proc = h.start("daemon", etcd, *router, env={"LB_DEFAULT_STACK": "debian"})
    await h.ready(proc)
    return proc, port, V3(h, proc)


async def stage(v3: V3, app: str, files: dict[str, bytes]) -> tuple[dict[str, Any], str, float]:
    """Upload ``files`` as a new package of ``app`` and stage it: the droplet when STAGED or
    FAILED, its staging log, and the seconds from upload to that."""
    package = await v3.call("POST", f"/v3/apps/{app}/packages", {"type": "bits"}, 201)
    started = time.monotonic()
    await v3.upload(package["guid"], zip_of(dict(files)))
    droplet = await v3.call("POST", f"/v3/packages/{package['guid']}/droplets", {}, 201)
    staged = await v3.staged(droplet["guid"], within=STAGING_S)
    took = time.monotonic() - started
    return staged, await v3.logs(droplet["guid"]), took


async def answers_through_router(h: Harness, v3: V3, project: str, app: str, port: int) -> bytes:
    """What the app's URL answers through the router, once it answers 200."""
    service = await v3.call("GET", f"/api/projects/{project}/services/{app}")
    host = service["urls"][0].split("//", 1)[1].split(":", 1)[0]

    async def probe() -> bytes | None:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            status, body = await through(port, host)
            if status == 200:
                return body
        return None

    body: bytes = await eventually(probe, 60, f"{host} through the router", explain=h.explain)
    return body


async def test_a_flask_app_reuses_its_venv_and_answers_through_the_router(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, debian_stack: str
) -> None:
    h = harness
    _, port, v3 = await daemon_on_debian(h, etcd_server.endpoint)
    project, app = await v3.app("flask")

    cold, log, cold_s = await stage(v3, app, FLASK_APP)
    assert cold["state"] == "STAGED", (cold, log)
    assert cold["staging_response"]["stack"] == "debian"
    assert cold["staging_response"]["buildpack"] == "python"
    assert "-----> pip install -r requirements.txt" in log
    assert "-----> Cache kept for the next staging" in log

    warm, log, warm_s = await stage(v3, app, FLASK_APP)
    assert warm["state"] == "STAGED", (warm, log)
    assert "-----> Restoring cached layers: venv" in log
    assert "-----> Reusing the venv layer: requirements.txt unchanged" in log
    assert "pip install" not in log
    assert "Collecting" not in log  # nothing downloaded
    assert warm_s < cold_s, (warm_s, cold_s)

    await v3.start(app, warm["guid"])
    assert await answers_through_router(h, v3, project, app, port) == b"hello from flask"

    changed, log, _ = await stage(v3, app, {**FLASK_APP, "requirements.txt": b"flask\nblinker\n"})
    assert changed["state"] == "STAGED", (changed, log)
    assert "-----> Restoring cached layers: venv" in log
    assert "-----> pip install -r requirements.txt" in log
    assert "Reusing the venv layer" not in log

    missing = b"lastbackend-no-such-package-4711==1.0\n"
    failed, log, _ = await stage(v3, app, {**FLASK_APP, "requirements.txt": missing})
    assert failed["state"] == "FAILED"
    error = failed["error"]
    assert error.startswith("buildpack python failed to build: its bin/build exited 1")
    assert "No matching distribution found for lastbackend-no-such-package-4711==1.0" in error
    assert f"-----> Staging failed: {error}" in log


async def test_an_express_app_answers_through_the_router(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, debian_stack: str
) -> None:
    h = harness
    _, port, v3 = await daemon_on_debian(h, etcd_server.endpoint)
    project, app = await v3.app("express")
    staged, log, _ = await stage(v3, app, EXPRESS_APP)
    assert staged["state"] == "STAGED", (staged, log)
    assert staged["staging_response"]["buildpack"] == "node"
    assert staged["staging_response"]["process_types"] == {"web": "node server.js"}
    await v3.start(app, staged["guid"])
    assert await answers_through_router(h, v3, project, app, port) == b"hello from express"


CHECKER = {
    "buildpack.toml": (
        'api = "0.10"\n[buildpack]\nid = "checker"\nversion = "1.0.0"\nname = "checker"\n'
        '[[targets]]\nos = "linux"\n'
    ),
    "bin/detect": "#!/bin/sh\n[ -f check.txt ] || exit 100\n",
    "bin/build": (
        "#!/bin/sh\nset -eu\n"
        'grep -q lb-test-ca-marker /etc/ssl/certs/ca-certificates.crt && echo "checker: CA seen"\n'
        "for v in SSL_CERT_FILE REQUESTS_CA_BUNDLE PIP_CERT NODE_EXTRA_CA_CERTS; do\n"
        '  eval "echo checker: $v=\\$$v"\n'
        "done\n"
        'case "$FTP_PROXY" in *@proxy.invalid:3128) echo "checker: proxy seen" ;; esac\n'
        "cat > \"$CNB_LAYERS_DIR/launch.toml\" <<'TOML'\n"
        '[[processes]]\ntype = "web"\ncommand = ["sleep", "600"]\ndefault = true\n'
        "TOML\n"
    ),
}


async def test_buildpacks_get_the_configured_ca_bundle_and_the_hosts_proxies(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, busybox_stack: str, tmp_path: Path
) -> None:
    """What docs/security.md promises a buildpack, as the staging controller hands it out:
    ``staging.ca_certificates`` at the bundle's path with the variables pointing at it, and the
    host's variables named in ``staging.build_env``; the droplet image gets neither."""
    for path, text in CHECKER.items():
        (tmp_path / "bps" / "checker" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "bps" / "checker" / path).write_text(text)
        (tmp_path / "bps" / "checker" / path).chmod(0o755)
    ca = tmp_path / "corp-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nlb-test-ca-marker\n-----END CERTIFICATE-----\n")
    h = harness
    env = {
        "LB_BUILDPACKS_DIR": str(tmp_path / "bps"),
        "LB_STAGING_CA_CERTIFICATES": str(ca),
        "LB_STAGING_BUILD_ENV": "FTP_PROXY",
        "FTP_PROXY": "http://builder:pw-4711@proxy.invalid:3128",
    }
    daemon = h.start("daemon", etcd_server.endpoint, env=env)
    await h.ready(daemon)
    v3 = V3(h, daemon)
    _, app = await v3.app("checked")
    staged, log, _ = await stage(v3, app, {"check.txt": b"x"})
    assert staged["state"] == "STAGED", (staged, log)
    assert "checker: CA seen" in log
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS"):
        assert f"checker: {name}={bundle}" in log
    assert "checker: proxy seen" in log
    image_env = h.docker.inspect_image(staged["image"])["Config"]["Env"]
    assert not [e for e in image_env if e.startswith(("FTP_PROXY=", "SSL_CERT_FILE="))]
