"""``daemon.event_loop``: a process runs on the loop it names, and refuses one it does not know.

A real ``lastbackend api`` on the test etcd with ``LB_EVENT_LOOP=uvloop`` says so when it starts,
serves a create and streams its event (uvloop's loop with the etcd client's watch thread beside
it), and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import pytest

from lastbackend.store.embedded import EmbeddedEtcd
from tests.integration.test_daemon import Daemon
from tests.support import RawEtcd, free_port

pytestmark = pytest.mark.etcd


def _listening(daemon: Daemon) -> dict[str, object]:
    for line in daemon.log.read_text().splitlines():
        if '"listening"' in line:
            return dict(json.loads(line))
    raise AssertionError(f"no 'listening' line:\n{daemon.output()}")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_api_runs_on_the_loop_it_is_told(
    loop: str, etcd: RawEtcd, etcd_server: EmbeddedEtcd, tmp_path: Path
) -> None:
    port = free_port()
    args = ["api", "--etcd", etcd_server.endpoint, "--listen", f"127.0.0.1:{port}"]
    daemon = Daemon(tmp_path, args, port, env={"LB_EVENT_LOOP": loop, "LB_LOG_FORMAT": "json"})
    try:
        daemon.wait_ready()
        assert _listening(daemon)["event_loop"] == loop
        url = f"{daemon.url}/api/events?prefix=projects/"
        with urllib.request.urlopen(url, timeout=10) as stream:
            while stream.readline().strip():  # the hello event
                pass
            assert daemon.request("POST", "/api/projects", {"name": "loopy"})[0] == 201
            lines = [stream.readline() for _ in range(3)]
        assert any(b'"loopy"' in line for line in lines), lines
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0, daemon.output()


def test_an_unknown_loop_is_refused_by_name(etcd_server: EmbeddedEtcd, tmp_path: Path) -> None:
    port = free_port()
    args = ["api", "--etcd", etcd_server.endpoint, "--listen", f"127.0.0.1:{port}"]
    daemon = Daemon(tmp_path, args, port, env={"LB_EVENT_LOOP": "trio"})
    assert daemon.wait_exit(30) == 2
    assert "LB_EVENT_LOOP" in daemon.output()
    assert "asyncio or uvloop" in daemon.output()
