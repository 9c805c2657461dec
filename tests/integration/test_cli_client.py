"""The user CLI against a real API (on the test etcd): ``login``, where it stores the endpoint,
how the environment overrides it, and the messages a user reads when something is wrong."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ClientFactory
from tests.support import CLI, free_port, run_cli

pytestmark = pytest.mark.etcd

TOKEN = "cli-admin-token-0123456789"


async def lb(*argv: str, home: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the installed script the way a user does (a subprocess, the API serving meanwhile)."""
    return await run_cli(*argv, home=home, env=env, within=60)


def url_of(client: Any) -> str:
    return str(client.make_url("")).rstrip("/")


async def test_login_stores_url_and_token_readable_by_the_user_only(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    api = await make_client(admin_tokens=(TOKEN,))
    code, _, err = await lb("login", url_of(api), "--token", TOKEN, home=tmp_path)
    assert code == 0, err
    path = tmp_path / "lastbackend" / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f'url = "{url_of(api)}"' in path.read_text()
    assert TOKEN not in err  # never echoed


async def test_a_bad_token_is_a_clear_401_message_and_nothing_is_stored(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    api = await make_client(admin_tokens=(TOKEN,))
    code, out, err = await lb("login", url_of(api), "--token", "wrong", home=tmp_path)
    assert code == 1
    assert "refused the token (401)" in err
    assert "LB_TOKEN" in err
    assert out == ""
    assert not (tmp_path / "lastbackend" / "config.toml").exists()


async def test_an_unreachable_url_says_so(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = await lb("login", url, home=tmp_path)
    assert code == 1
    assert f"cannot reach the API at {url}" in err
    assert "Traceback" not in err


async def test_usage_errors_exit_2(tmp_path: Path) -> None:
    code, _, err = await lb("login", home=tmp_path)
    assert code == 2
    assert "Missing argument 'URL'" in err
    code, _, _ = await lb("no-such-command", home=tmp_path)
    assert code == 2


async def test_the_stored_login_is_used_and_the_environment_overrides_it(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    api = await make_client(admin_tokens=(TOKEN,))
    assert (await lb("login", url_of(api), "--token", TOKEN, home=tmp_path))[0] == 0
    code, out, err = await lb("apps", "--json", home=tmp_path)  # the file's URL and token
    assert code == 0, err
    assert json.loads(out) == []
    elsewhere = f"http://127.0.0.1:{free_port()}"
    code, _, err = await lb("apps", home=tmp_path, env={"LB_URL": elsewhere})
    assert code == 1
    assert f"cannot reach the API at {elsewhere}" in err
    code, _, err = await lb("apps", home=tmp_path, env={"LB_TOKEN": "not-it"})
    assert code == 1
    assert "refused the token (401)" in err


async def test_api_errors_print_their_detail_lines(api: Any, tmp_path: Path) -> None:
    project = await (await api.post("/api/projects", json={"name": "errs"})).json()
    body = {"name": "web", "relationships": {"space": {"guid": project["id"]}}}
    assert (await api.post("/v3/apps", json=body)).status == 201
    env = {"LB_URL": url_of(api)}
    code, out, err = await lb("set-env", "web", "1BAD", "v", home=tmp_path, env=env)
    assert code == 1
    assert err.startswith("lastbackend: environment_variables")
    assert out == ""
    code, _, err = await lb("scale", "nope", "-i", "2", home=tmp_path, env=env)
    assert (code, err.strip()) == (1, "lastbackend: app: no app nope")
    code, _, err = await lb("scale", "web", "-i", "-1", home=tmp_path, env=env)
    assert code == 2  # a usage error: click's range check, before any call


async def test_events_follow_the_stream(api: Any, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LB_", "XDG_"))}
    env.update(XDG_CONFIG_HOME=str(tmp_path), LB_URL=url_of(api))
    proc = await asyncio.create_subprocess_exec(
        str(CLI), "events", "projects/", "--json", env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        seen: list[dict[str, Any]] = []

        async def created() -> None:
            made = 0
            while not seen:  # the command may still be starting: create until one shows
                made += 1
                await api.post("/api/projects", json={"name": f"ev{made}"})
                with contextlib.suppress(TimeoutError):
                    line = await asyncio.wait_for(proc.stdout.readline(), 1)  # type: ignore[union-attr]
                    seen.append(json.loads(line))

        await asyncio.wait_for(created(), 30)
    finally:
        proc.terminate()
        await proc.wait()
    assert seen[-1]["kind"] == "created"
    assert seen[-1]["key"].startswith("/lastbackend/projects/")


def on_a_terminal(*argv: str, env: dict[str, str]) -> bytes:
    """The script's output when stdout and stderr are a terminal (a pty), as a user sees it."""
    import pty
    import subprocess

    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(CLI), *argv], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
            env=env, close_fds=True,
        )  # fmt: skip
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        proc.wait(30)
        return b"".join(chunks)
    finally:
        os.close(leader)


def test_colour_only_on_a_terminal_and_never_with_no_color(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LB_", "XDG_", "NO_COLOR"))}
    env.update(XDG_CONFIG_HOME=str(tmp_path), LB_URL=f"http://127.0.0.1:{free_port()}")
    env["TERM"] = "xterm-256color"
    coloured = on_a_terminal("apps", env=env)
    assert b"cannot reach the API" in coloured
    assert b"\x1b[" in coloured  # the red "lastbackend:" prefix
    plain = on_a_terminal("apps", env={**env, "NO_COLOR": "1"})
    assert b"cannot reach the API" in plain
    assert b"\x1b[" not in plain
