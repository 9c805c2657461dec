"""The real console script in subprocesses: embedded etcd, signals, refusal to start, ``tree``.

Every process is bounded by timeouts and killed in ``finally``. Child processes are found by
scanning ``/proc/*/stat`` for their parent pid, so no psutil is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from lastbackend.store.embedded import EmbeddedEtcd
from tests.conftest import dump
from tests.support import free_port, free_ports

pytestmark = pytest.mark.etcd


def console_script() -> str:
    sibling = Path(sys.executable).parent / "lastbackend"
    if sibling.exists():
        return str(sibling)
    found = shutil.which("lastbackend")
    if found is None:
        pytest.skip("the lastbackend console script is not installed")
    return found


LB = console_script()


@pytest.fixture(autouse=True)
def _needs_etcd() -> None:
    if shutil.which("etcd") is None:
        pytest.skip("the etcd binary is not installed (Debian: etcd-server)")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LB_")}


# --- processes ----------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of a process, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    state, ppid = raw[raw.rindex(")") + 2 :].split()[:2]
    return comm, state, int(ppid)


def children(pid: int, name: str | None = None) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        info = _stat(int(entry.name))
        if info and info[2] == pid and info[1] != "Z" and (name is None or info[0] == name):
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running: not gone and not a zombie waiting for a reaper."""
    info = _stat(pid)
    return info is not None and info[1] != "Z"


def wait_until(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {within}s")


def kill_if_etcd(pid: int) -> None:
    with contextlib.suppress(OSError):
        if b"etcd" in Path(f"/proc/{pid}/cmdline").read_bytes() and alive(pid):
            os.kill(pid, signal.SIGKILL)


def port_refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


class Daemon:
    """``lastbackend <args>`` with output in a log file; ``url`` is its API."""

    count = 0

    def __init__(
        self, tmp: Path, args: Sequence[str], port: int, env: Mapping[str, str] | None = None
    ) -> None:
        Daemon.count += 1
        self.log = tmp / f"daemon-{Daemon.count}.log"
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [LB, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**clean_env(), **(env or {})},
            )
        self.etcd_pids: list[int] = []

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 5,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def wait_ready(self, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the daemon exited with {self.proc.returncode}:\n{self.output()}"
                )
            with contextlib.suppress(OSError):
                if self.request("GET", "/readyz", timeout=1)[0] == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"/readyz not 200 within {within}s:\n{self.output()}")

    def wait_exit(self, within: float) -> int:
        try:
            return self.proc.wait(within)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the daemon did not exit within {within}s:\n{self.output()}"
            ) from None

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.etcd_pids += children(self.proc.pid, "etcd")
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.etcd_pids:
            kill_if_etcd(pid)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Any]:
    started: list[Daemon] = []

    def start(args: Sequence[str], port: int) -> Daemon:
        daemon = Daemon(tmp_path, args, port)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.cleanup()


def http_get(url: str, *, host: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --- embedded etcd ------------------------------------------------------------------------------


def test_embedded_etcd_lifecycle(tmp_path, daemons):
    data = tmp_path / "data"
    client_port, peer_port, api_port, http_port, https_port = free_ports(5)
    cfg = tmp_path / "lastbackend.toml"
    cfg.write_text(
        "[etcd]\n"
        f'embedded_client = "127.0.0.1:{client_port}"\n'
        f'embedded_peer = "127.0.0.1:{peer_port}"\n'
        "[api]\n"
        "shutdown_timeout = 5.0\n"
        "[router]\n"
        f'http = "127.0.0.1:{http_port}"\n'
        f'https = "127.0.0.1:{https_port}"\n'
    )
    args = [
        "daemon",
        "--config",
        str(cfg),
        "--data-dir",
        str(data),
        "--listen",
        f"127.0.0.1:{api_port}",
    ]

    # 1. first start: an etcd child under the data dir
    first = daemons(args, api_port)
    first.wait_ready()
    etcds = children(first.proc.pid, "etcd")
    assert len(etcds) == 1, f"one etcd child expected, got {etcds}:\n{first.output()}"
    first.etcd_pids += etcds
    caddies = children(first.proc.pid, "caddy")
    assert len(caddies) == 1, f"the daemon runs its router's Caddy:\n{first.output()}"
    first.etcd_pids += caddies
    status, unknown = http_get(f"http://127.0.0.1:{http_port}/", host="nobody.example.com")
    assert (status, unknown) == (404, "no app is served at nobody.example.com\n")
    assert (data / "etcd").is_dir()
    assert (data / "etcd" / "member").is_dir(), "etcd keeps its data under <data-dir>/etcd"
    assert not port_refuses(client_port), "the embedded etcd listens on the configured port"
    status, project = first.request("POST", "/api/projects", {"name": "kept"})
    assert status == 201, project

    # 2. SIGTERM: exit 0, etcd stopped with it, its port free again
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait_exit(15) == 0, first.output()
    wait_until(lambda: not alive(etcds[0]), 5, "the embedded etcd stops with the daemon")
    wait_until(lambda: not alive(caddies[0]), 5, "the router's Caddy stops with the daemon")
    assert port_refuses(client_port)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", client_port))  # nothing listens there any more

    # 3. start again on the same data dir: the data survived
    second = daemons(args, api_port)
    second.wait_ready()
    etcds = children(second.proc.pid, "etcd")
    assert len(etcds) == 1, etcds
    second.etcd_pids += etcds
    caddies = children(second.proc.pid, "caddy")
    second.etcd_pids += caddies
    status, found = second.request("GET", "/api/projects/kept")
    assert status == 200, found
    assert found["id"] == project["id"]

    # 4. kill -9: the etcd child dies with its parent (PR_SET_PDEATHSIG)
    second.proc.kill()
    second.proc.wait(5)
    wait_until(lambda: not alive(etcds[0]), 10, "the embedded etcd dies with a killed daemon")
    wait_until(lambda: not alive(caddies[0]), 10, "and so does the router's Caddy: no orphan")
    wait_until(lambda: port_refuses(client_port), 5, "the etcd client port is released")


# --- graceful shutdown --------------------------------------------------------------------------


DRAIN_TIMEOUT = 3.0


def _drain(daemon: Daemon) -> tuple[bytes, bool]:
    """Half a POST, SIGTERM, a refused new connection, the rest: the response and the refusal."""
    payload = json.dumps({"name": "drained"}).encode()
    head = (
        "POST /api/projects HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{daemon.port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "\r\n"
    ).encode()
    half = len(payload) // 2
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=DRAIN_TIMEOUT + 2) as sock:
        sock.sendall(head + payload[:half])
        time.sleep(0.3)  # the handler is now waiting for the rest of the body
        daemon.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        refused = port_refuses(daemon.port)
        assert daemon.proc.poll() is None, "the daemon waits for the in-flight request"
        sock.sendall(payload[half:])
        response = b""
        while b"\r\n\r\n" not in response:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                chunk = b""
            if not chunk:
                break
            response += chunk
        header, _, rest = response.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in header.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return (header + b"\r\n\r\n" + rest if response else b""), refused


async def test_sigterm_drains_in_flight_requests(tmp_path, etcd, etcd_server, daemons):
    port = free_port()
    cfg = tmp_path / "lastbackend.toml"
    # short, so that a drain that fails still ends the test quickly
    cfg.write_text(f"[api]\nshutdown_timeout = {DRAIN_TIMEOUT}\n")
    args = [
        "daemon",
        "--config",
        str(cfg),
        "--etcd",
        etcd_server.endpoint,
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(tmp_path / "data"),
        "--no-router",
    ]
    daemon = daemons(args, port)
    await asyncio.to_thread(daemon.wait_ready)
    assert children(daemon.proc.pid, "etcd") == [], "--etcd starts no embedded server"

    response, refused = await asyncio.to_thread(_drain, daemon)
    code = await asyncio.to_thread(daemon.wait_exit, DRAIN_TIMEOUT + 10)
    assert refused, "a new connection after SIGTERM is refused"
    assert response, (
        "no response to the request in flight at SIGTERM: the rest of its body, sent after the "
        "signal, was dropped and the request was cancelled at shutdown_timeout "
        f"(exit code {code})\n{daemon.output()}"
    )
    status_line = response.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 201"), response
    body = json.loads(response.partition(b"\r\n\r\n")[2])
    assert body["name"] == "drained"
    assert code == 0, daemon.output()
    assert not (tmp_path / "data" / "etcd").exists()

    keys = await dump(etcd)
    assert keys["/lastbackend/helper/projects/drained"].decode() == body["id"]
    assert f"/lastbackend/projects/{body['id']}/meta" in keys


# --- refusing to start --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["daemon", "api"])
def test_non_loopback_listen_without_a_token_refuses_to_start(tmp_path, command):
    port = free_port()
    args = [command, "--listen", f"0.0.0.0:{port}", "--data-dir", str(tmp_path / "data")]
    if command == "api":
        args += ["--etcd", "127.0.0.1:1"]
    result = subprocess.run(
        [LB, *args], capture_output=True, text=True, env=clean_env(), timeout=30, check=False
    )
    assert result.returncode == 2, result
    assert "token" in result.stderr.lower(), result.stderr
    assert "0.0.0.0" in result.stderr
    assert not (tmp_path / "data").exists(), "nothing was started"


# --- tree ----------------------------------------------------------------------------------------


SECRET = {"username": "u", "password": "hunter2", "token": "tok-abc-987"}


async def run_tree(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        LB,
        "tree",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(), err.decode()


def expected(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw.decode()


@pytest.fixture
async def populated(api, etcd) -> dict[str, bytes]:
    resp = await api.post("/api/projects", json={"name": "demo", "description": "a demo"})
    assert resp.status == 201, await resp.text()
    await etcd.put("/lastbackend/registries/example.com", json.dumps(SECRET))
    await etcd.put(
        "/lastbackend/vendors/github", json.dumps({"name": "github", "auth": {"token": "zzz-999"}})
    )
    return await dump(etcd)


def assert_masked(text: str) -> None:
    for secret in ("hunter2", "tok-abc-987", "zzz-999"):
        assert secret not in text


async def test_tree_prints_keys_with_decoded_values_and_masks_secrets(etcd_server, populated):
    code, out, err = await run_tree("--etcd", etcd_server.endpoint)
    assert code == 0, err
    assert_masked(out + err)
    rows = {}
    for line in out.splitlines():
        key, _, value = line.partition("  ")
        rows[key] = value
    assert set(rows) == set(populated), out
    for key, raw in populated.items():
        want = expected(raw)
        if key.startswith("/lastbackend/projects/"):
            assert json.loads(rows[key]) == want
            assert want["name"] == "demo"
        elif key.startswith("/lastbackend/helper/"):
            assert rows[key] == want
    assert json.loads(rows["/lastbackend/registries/example.com"]) == {
        "username": "u",
        "password": "***",
        "token": "***",
    }
    assert json.loads(rows["/lastbackend/vendors/github"]) == {
        "name": "github",
        "auth": {"token": "***"},
    }
    assert f"{len(populated)} keys" in err


async def test_tree_json_parses_and_masks(etcd_server, populated):
    code, out, err = await run_tree("--etcd", etcd_server.endpoint, "--json")
    assert code == 0, err
    assert_masked(out + err)
    rows = json.loads(out)
    assert set(rows) == set(populated)
    assert rows["/lastbackend/registries/example.com"]["password"] == "***"
    assert rows["/lastbackend/registries/example.com"]["username"] == "u"
    for key, raw in populated.items():
        if not key.startswith(("/lastbackend/registries/", "/lastbackend/vendors/")):
            assert rows[key] == expected(raw), key


async def test_tree_with_a_prefix(etcd_server, populated):
    code, out, err = await run_tree(
        "--etcd", etcd_server.endpoint, "--json", "/lastbackend/registries/"
    )
    assert code == 0, err
    assert list(json.loads(out)) == ["/lastbackend/registries/example.com"]


async def test_tree_against_a_dead_etcd_fails_cleanly(tmp_path):
    server = EmbeddedEtcd(tmp_path / "unused", client=f"127.0.0.1:{free_port()}")
    proc = await asyncio.create_subprocess_exec(
        LB,
        "tree",
        "--etcd",
        server.endpoint,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**clean_env(), "LB_LOG_LEVEL": "error"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1, (out, err)
    assert b"Traceback" not in err
    assert b"etcd" in err
