"""The API keeps the contract its OpenAPI document states, checked by Schemathesis.

Schemathesis reads ``/openapi.json`` from a real daemon (embedded etcd, controllers) and sends
what the schemas admit and what they refuse, then follows the links between operations with
the objects it created. Every one of its checks runs: no 5xx; a request the schema admits is
not refused (4xx) and one it refuses is not accepted; every status, content type and response
body is the documented one. Where a body the schema admits is refused because of the state of
the tree (an app that does not exist, a revision no longer kept), ``schemathesis.toml`` says so
per operation; ``test_the_exceptions_name_documented_operations`` keeps that list honest.

Left out: the streams (``/api/events``, ``.../logs``: a follow never ends, so every request
would be one timeout) and the node routes (the admin token is refused there by design; see
``test_node_credential.py``) and the dashboard's static files under ``/ui`` (HTML, CSS and
JavaScript, not the JSON API: ``tests/integration/test_dashboard.py`` checks their headers and
that no path reaches another file). Schemathesis' ``filter_too_much`` health check is about how
fast it can generate host names from their pattern, not about the API: it is suppressed.

The seed is fixed so a CI run is repeatable; ``LB_CONTRACT_SEED=<n>`` explores others, and
``LB_CONTRACT_EXAMPLES`` sets how many examples each operation gets (20 by default).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_daemon import Daemon
from tests.support import free_ports

pytestmark = pytest.mark.etcd

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXCLUDED_PATHS = r"^/api/events|/logs$|^/api/node/|^/ui"
SEED = os.environ.get("LB_CONTRACT_SEED", "20261203")
EXAMPLES = os.environ.get("LB_CONTRACT_EXAMPLES", "20")


def _schemathesis() -> str:
    found = Path(sys.executable).parent / "st"
    if not found.exists():
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    return str(found)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    if shutil.which("etcd") is None:
        pytest.skip("the etcd binary is not installed (Debian: etcd-server)")
    tmp = tmp_path_factory.mktemp("contract")
    token = "contract-" + secrets.token_hex(16)
    port, client, peer = free_ports(3)
    config = tmp / "lastbackend.toml"
    config.write_text(
        f'[etcd]\nembedded_client = "127.0.0.1:{client}"\nembedded_peer = "127.0.0.1:{peer}"\n'
    )
    args = ["daemon", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    args += ["--data-dir", str(tmp / "data"), "--token", token, "--no-router", "--no-node"]
    started = Daemon(tmp, args, port, env={"LB_DEFAULT_STACK": "busybox"})
    try:
        started.wait_ready(60)
        yield started, token
    finally:
        started.cleanup()


def test_every_operation_keeps_its_documented_contract(daemon: tuple[Daemon, str]) -> None:
    started, token = daemon
    command = [_schemathesis(), "--config-file", str(CONFIG), "run"]
    command += [f"{started.url}/openapi.json", "--checks", "all"]
    command += ["-H", f"Authorization: Bearer {token}", "--exclude-path-regex", EXCLUDED_PATHS]
    command += ["--max-examples", EXAMPLES, "--seed", SEED, "--workers", "2"]
    command += ["--request-timeout", "10", "--suppress-health-check", "filter_too_much"]
    command += ["--no-color"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-20000:]
    assert "passed" in report, report[-4000:]
    assert started.proc.poll() is None, started.output()


def test_the_exceptions_name_documented_operations(daemon: tuple[Daemon, str]) -> None:
    """An exception for an operation that no longer exists (renamed, removed) is a stale one."""
    started, _ = daemon
    status, document = started.request("GET", "/openapi.json")
    assert status == 200
    documented = {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "put", "post", "patch", "delete")
    }
    listed = [op["include-name"] for op in tomllib.loads(CONFIG.read_text())["operations"]]
    assert listed, "schemathesis.toml lists no operations"
    assert set(listed) <= documented, sorted(set(listed) - documented)
