"""Local users kept out of the embedded etcd (issue 13, section 4): client certificates only.

The review found ``lastbackend daemon``'s etcd on ``127.0.0.1:23790`` answering any local
process, so any user of the host could write pods or node keys. Here a real ``lastbackend
daemon`` (embedded etcd, no router, no node agent) is probed as such a user would: plain HTTP on
the client and the peer port, TLS without a client certificate, the gRPC client without one; then
as the daemon's user, with the files it made in ``<data_dir>/etcd-tls``: raw HTTP to etcd's
gateway, the documented ``etcdctl`` line, and ``lastbackend tree`` with no endpoint flags.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from lastbackend.store.etcd import TLS, StoreUnavailable
from lastbackend.store.keys import prefix_end
from tests.integration.test_daemon import LB, Daemon, clean_env
from tests.support import RawEtcd, free_ports

pytestmark = pytest.mark.etcd


@attrs.frozen
class Running:
    daemon: Daemon
    data: Path
    config: Path
    client: str
    peer: str

    @property
    def tls(self) -> Path:
        return self.data / "etcd-tls"


def _start(tmp: Path, data: Path) -> Running:
    client_port, peer_port, api_port = free_ports(3)
    config = tmp / "lastbackend.toml"
    config.write_text(
        "[etcd]\n"
        f'embedded_client = "127.0.0.1:{client_port}"\n'
        f'embedded_peer = "127.0.0.1:{peer_port}"\n'
        "[api]\n"
        "shutdown_timeout = 5.0\n"
    )
    args = ["daemon", "--no-router", "--no-node", "--config", str(config), "--data-dir", str(data)]
    daemon = Daemon(tmp, [*args, "--listen", f"127.0.0.1:{api_port}"], api_port)
    daemon.wait_ready()
    return Running(daemon, data, config, f"127.0.0.1:{client_port}", f"127.0.0.1:{peer_port}")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    if shutil.which("etcd") is None:
        pytest.skip("the etcd binary is not installed (Debian: etcd-server)")
    tmp = tmp_path_factory.mktemp("embedded-etcd")
    started = _start(tmp, tmp / "data")
    try:
        status, body = started.daemon.request("POST", "/api/projects", {"name": "guarded"})
        assert status == 201, body
        yield started
    finally:
        started.daemon.cleanup()


def _context(running: Running, *, client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=running.tls / "ca.crt")
    if client_cert:
        context.load_cert_chain(running.tls / "client.crt", running.tls / "client.key")
    return context


def _range(url: str, prefix: str, context: ssl.SSLContext | None) -> dict[str, str]:
    """``/v3/kv/range`` of etcd's gRPC gateway: {key: value} under ``prefix``."""

    def b64(raw: str | bytes) -> str:
        return base64.b64encode(raw.encode() if isinstance(raw, str) else raw).decode()

    body = json.dumps({"key": b64(prefix), "range_end": b64(prefix_end(prefix))}).encode()
    request = urllib.request.Request(f"{url}/v3/kv/range", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=5, context=context) as resp:
        found = json.loads(resp.read())
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode()
        for kv in found.get("kvs", [])
    }


def _range_refused(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        _range(url, "/lastbackend/", context)
    except OSError:  # reset, EOF, or the handshake alert (TLS 1.3 checks the client's cert after)
        return True
    return False


def _refused(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as resp:
            resp.read()
    except (OSError, ssl.SSLError):  # reset, closed without a response, handshake alert
        return True
    return False


def test_plain_http_is_refused_on_the_client_port(running: Running) -> None:
    assert _refused(f"http://{running.client}/health")
    assert _refused(f"http://{running.client}/v3/kv/range")
    assert _range_refused(f"http://{running.client}", None)


def test_tls_without_a_client_certificate_is_refused(running: Running) -> None:
    anonymous = _context(running, client_cert=False)
    assert _refused(f"https://{running.client}/health", anonymous)
    assert _range_refused(f"https://{running.client}", anonymous)


async def test_grpc_clients_without_the_certificate_get_nothing(running: Running) -> None:
    for tls in (None, TLS(ca=running.tls / "ca.crt")):
        async with RawEtcd([running.client], tls=tls, timeout=2.0) as etcd:
            with pytest.raises(StoreUnavailable):
                await etcd.put("/lastbackend/nodes/intruder", '{"address": "http://evil"}')
    with_cert = TLS(running.tls / "ca.crt", running.tls / "client.crt", running.tls / "client.key")
    async with RawEtcd([running.client], tls=with_cert) as etcd:
        assert (await etcd.get("/lastbackend/nodes/intruder")) is None, "nothing was written"


def test_the_peer_port_refuses_plain_http_and_certificate_less_tls(running: Running) -> None:
    assert _refused(f"http://{running.peer}/members")
    assert _refused(f"https://{running.peer}/members", _context(running, client_cert=False))


def test_the_generated_client_certificate_reads_the_tree(running: Running) -> None:
    context = _context(running, client_cert=True)
    found = _range(f"https://{running.client}", "/lastbackend/helper/projects/", context)
    assert list(found) == ["/lastbackend/helper/projects/guarded"]


def test_credentials_are_private_to_the_daemons_user(running: Running) -> None:
    assert running.tls.stat().st_mode & 0o777 == 0o700
    names = sorted(p.name for p in running.tls.iterdir())
    assert names == ["ca.crt", "ca.key", "client.crt", "client.key", "server.crt", "server.key"]
    for path in running.tls.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
        assert path.stat().st_uid == os.geteuid(), path


def test_tree_finds_the_credentials_with_no_etcd_flags(running: Running) -> None:
    for how in (["--data-dir", str(running.data)], []):
        env = {**clean_env(), "LB_LOG_LEVEL": "error"}
        if not how:
            env["LB_DATA_DIR"] = str(running.data)
        done = subprocess.run(
            [LB, "tree", "--config", str(running.config), *how, "/lastbackend/helper/projects/"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("/lastbackend/helper/projects/guarded  "), done.stdout


def test_another_user_is_told_whose_files_these_are(running: Running, tmp_path: Path) -> None:
    env = {**clean_env(), "LB_LOG_LEVEL": "error", "LB_DATA_DIR": str(running.data)}
    cmd = [LB, "tree"]
    unreadable = running.tls / "ca.crt"
    if os.geteuid() == 0:  # root reads any file: ask as nobody
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to drop root")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", *cmd]
        env["HOME"] = "/"
    else:
        copy = tmp_path / "data"
        shutil.copytree(running.tls, copy / "etcd-tls")
        unreadable = copy / "etcd-tls" / "ca.crt"
        unreadable.chmod(0)
        env["LB_DATA_DIR"] = str(copy)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"cannot read {unreadable}: run as the daemon's user" in done.stderr
    assert "Traceback" not in done.stderr


def test_tree_on_a_data_dir_without_credentials_says_so(tmp_path: Path) -> None:
    env = {**clean_env(), "LB_LOG_LEVEL": "error", "LB_DATA_DIR": str(tmp_path / "nothing")}
    done = subprocess.run([LB, "tree"], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 2
    assert f"{tmp_path / 'nothing' / 'etcd-tls' / 'ca.crt'} does not exist" in done.stderr
    assert "lastbackend daemon" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_documented_etcdctl_line_works(running: Running) -> None:
    if shutil.which("etcdctl") is None:
        pytest.skip("etcdctl is not installed (Debian: etcd-client)")
    d = running.tls
    done = subprocess.run(
        ["etcdctl", "--endpoints", f"https://{running.client}", "--cacert", str(d / "ca.crt"),
         "--cert", str(d / "client.crt"), "--key", str(d / "client.key"),
         "get", "--prefix", "/lastbackend/helper/projects/", "--keys-only"],
        capture_output=True, text=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["/lastbackend/helper/projects/guarded"]


def test_a_restart_reuses_the_ca_and_a_broken_set_is_made_again(tmp_path: Path) -> None:
    if shutil.which("etcd") is None:
        pytest.skip("the etcd binary is not installed (Debian: etcd-server)")
    data = tmp_path / "data"
    first = _start(tmp_path, data)
    try:
        ca = (data / "etcd-tls" / "ca.crt").read_bytes()
        first.daemon.proc.send_signal(signal.SIGTERM)
        assert first.daemon.wait_exit(15) == 0, first.daemon.output()
    finally:
        first.daemon.cleanup()

    second = _start(tmp_path, data)
    try:
        assert (data / "etcd-tls" / "ca.crt").read_bytes() == ca, "the same CA on a restart"
        second.daemon.proc.send_signal(signal.SIGTERM)
        assert second.daemon.wait_exit(15) == 0, second.daemon.output()
    finally:
        second.daemon.cleanup()

    (data / "etcd-tls" / "client.key").unlink()  # an incomplete set: made again, whole
    third = _start(tmp_path, data)
    try:
        assert (data / "etcd-tls" / "ca.crt").read_bytes() != ca
        assert (data / "etcd-tls" / "client.key").stat().st_mode & 0o777 == 0o600
        status, _ = third.daemon.request("GET", "/api/projects")
        assert status == 200, third.daemon.output()
    finally:
        third.daemon.cleanup()
