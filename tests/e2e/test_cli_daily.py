"""The daily commands on a pushed app, as a user runs them against a real daemon, router and
Docker: every ``--json`` parses, ``scale`` changes the instances, ``logs -f`` shows a line the app
writes after the command started, ``set-env``/``unset-env``, ``stop``/``start``, ``rollback``
serves the previous version again, ``delete -f`` removes the app."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Harness, Proc, eventually
from tests.e2e.test_cli_push import _serves, get, http_url, lb, routed, site
from tests.support import CLI

pytestmark = [pytest.mark.docker, pytest.mark.etcd]
__all__ = ["routed"]  # the fixture, used by name

TICKER = (
    'web: i=0; (while :; do i=$((i+1)); echo "tick $i"; sleep 0.3; done) & '
    "mkdir -p /tmp/www && echo hi > /tmp/www/index.html && "
    "trap 'exit 0' TERM; httpd -f -p $PORT -h /tmp/www & wait\n"
)


async def lbj(*argv: str, url: str, home: Path) -> Any:
    """A command with ``--json``: exit 0 and stdout one JSON document."""
    code, out, err = await lb(*argv, "--json", url=url, home=home)
    assert code == 0, err
    return json.loads(out)


async def test_json_outputs_scale_logs_env_stop_start_delete(
    harness: Harness, routed: tuple[Proc, int], tmp_path: Path
) -> None:
    daemon, router = routed
    url = daemon.url
    directory = tmp_path / "ticker"
    directory.mkdir()
    (directory / "Procfile").write_text(TICKER)
    code, out, err = await lb("push", "ticker", "-p", str(directory), url=url, home=tmp_path)
    assert code == 0, err
    assert await get(router, http_url(out)) == (200, "hi\n")

    listed = await lbj("apps", url=url, home=tmp_path)
    assert [(a["name"], a["project"], a["state"]) for a in listed] == [
        ("ticker", "default", "STARTED")
    ]
    assert listed[0]["urls"]
    details = await lbj("app", "ticker", url=url, home=tmp_path)
    assert details["droplet"]["state"] == "STAGED"
    assert len(details["containers"]) == 1
    assert details["events"], "recent events of the app's keys"
    assert {e["kind"] for e in details["events"]} <= {"created", "updated", "deleted"}
    code, shown, _ = await lb("app", "ticker", url=url, home=tmp_path)
    assert code == 0
    assert "revision" in shown  # the table of recent events
    assert (await lbj("builds", "ticker", url=url, home=tmp_path))[0]["state"] == "STAGED"
    code, log, _ = await lb("builds", "ticker", "--logs", "1", url=url, home=tmp_path)
    assert code == 0
    assert "procfile" in log
    assert "repos" in await lbj("tags", url=url, home=tmp_path)

    scaled = await lbj("scale", "ticker", "-i", "2", "-m", "64M", url=url, home=tmp_path)
    assert scaled == {"instances": 2, "memory": 64}

    async def two_ready() -> bool:
        found = await lbj("app", "ticker", url=url, home=tmp_path)
        running = [c for c in found["containers"] if c["status"] == "running" and c["ready"]]
        return len(running) == 2

    await eventually(two_ready, 60, "two ready instances", explain=harness.explain)

    # logs -f: a line the app writes after the command started
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LB_", "XDG_"))}
    env.update(XDG_CONFIG_HOME=str(tmp_path), LB_URL=url, NO_COLOR="1")
    follow = await asyncio.create_subprocess_exec(
        str(CLI), "logs", "ticker", "-f", "--tail", "0", env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert follow.stdout is not None
    try:
        line = await asyncio.wait_for(follow.stdout.readline(), 20)
        assert b"tick " in line, line
    finally:
        follow.terminate()
        await follow.wait()

    code, _, err = await lb("set-env", "ticker", "COLOUR", "blue", url=url, home=tmp_path)
    assert code == 0, err
    assert (await lbj("env", "ticker", url=url, home=tmp_path)) == {"COLOUR": "blue"}
    code, _, err = await lb("unset-env", "ticker", "COLOUR", url=url, home=tmp_path)
    assert code == 0, err
    assert (await lbj("env", "ticker", url=url, home=tmp_path)) == {}
    code, _, err = await lb("unset-env", "ticker", "COLOUR", url=url, home=tmp_path)
    assert code == 1
    assert "has no variable COLOUR" in err

    code, _, err = await lb("stop", "ticker", url=url, home=tmp_path)
    assert code == 0, err
    assert (await lbj("apps", url=url, home=tmp_path))[0]["state"] == "STOPPED"
    code, _, err = await lb("start", "ticker", url=url, home=tmp_path)
    assert code == 0, err
    assert (await lbj("apps", url=url, home=tmp_path))[0]["state"] == "STARTED"

    code, _, err = await lb("delete", "ticker", url=url, home=tmp_path)
    assert code == 1  # no terminal to confirm on
    assert "-f" in err
    code, _, err = await lb("delete", "ticker", "-f", url=url, home=tmp_path)
    assert code == 0, err
    assert await lbj("apps", url=url, home=tmp_path) == []
    code, _, err = await lb("app", "ticker", url=url, home=tmp_path)
    assert code == 1
    assert "app: no app ticker" in err


async def test_rollback_serves_the_previous_version_again(
    routed: tuple[Proc, int], tmp_path: Path
) -> None:
    daemon, router = routed
    url = daemon.url
    directory = site(tmp_path / "page", "<p>one</p>\n")
    code, out, err = await lb("push", "-p", str(directory), url=url, home=tmp_path)
    assert code == 0, err
    page = http_url(out)
    (directory / "index.html").write_text("<p>two</p>\n")
    code, _, err = await lb("push", "-p", str(directory), url=url, home=tmp_path)
    assert code == 0, err
    assert await get(router, page) == (200, "<p>two</p>\n")

    service = await lbj("rollback", "page", url=url, home=tmp_path)
    assert service["image"]
    await eventually(lambda: _serves(router, page, "<p>one</p>\n"), 60, "the old version")
    code, _, err = await lb("rollback", "page", "--revision", "99", url=url, home=tmp_path)
    assert code == 1
    assert "lastbackend: revision: no revision 99" in err
