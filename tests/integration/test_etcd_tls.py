"""etcd over TLS with client certificates: the ``--etcd-ca/--etcd-cert/--etcd-key`` interface."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lastbackend.store.etcd import TLS, Etcd, StoreUnavailable
from tests.support import RawEtcd, free_port
from tests.tls import issue, make_ca

pytestmark = pytest.mark.etcd


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if shutil.which("openssl") is None or shutil.which("etcd") is None:
        pytest.skip("needs openssl and etcd")
    make_ca(tmp_path)
    issue("server", "localhost", "IP:127.0.0.1,DNS:localhost", tmp_path)
    issue("client", "lastbackend", "DNS:lastbackend", tmp_path)
    client, peer = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            "etcd",
            f"--data-dir={tmp_path / 'data'}",
            f"--listen-client-urls=https://{client}",
            f"--advertise-client-urls=https://{client}",
            f"--listen-peer-urls=http://{peer}",
            f"--initial-advertise-peer-urls=http://{peer}",
            f"--initial-cluster=default=http://{peer}",
            f"--cert-file={tmp_path / 'server.crt'}",
            f"--key-file={tmp_path / 'server.key'}",
            f"--trusted-ca-file={tmp_path / 'ca.crt'}",
            "--client-cert-auth",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "etcd.log").open("wb"),
    )
    try:
        yield client, tmp_path
    finally:
        proc.terminate()
        proc.wait(10)


def _tls(d: Path, *, with_client_cert: bool = True) -> TLS:
    if not with_client_cert:
        return TLS(ca=d / "ca.crt")
    return TLS(ca=d / "ca.crt", cert=d / "client.crt", key=d / "client.key")


async def _wait_up(endpoint: str, d: Path) -> Etcd:
    etcd = RawEtcd([endpoint], tls=_tls(d), timeout=2.0)
    await etcd.connect()
    for _ in range(100):
        try:
            await etcd.status()
            return etcd
        except StoreUnavailable:
            await asyncio.sleep(0.1)
    raise AssertionError("etcd with TLS never answered")


async def test_client_certificates_work_and_are_required(tls_etcd: tuple[str, Path]) -> None:
    endpoint, d = tls_etcd
    etcd = await _wait_up(endpoint, d)
    try:
        await etcd.put("/lastbackend/helper/projects/tls", "an-id")
        assert (await etcd.get("/lastbackend/helper/projects/tls")).value == b"an-id"
    finally:
        await etcd.close()

    anonymous = RawEtcd([endpoint], tls=_tls(d, with_client_cert=False), timeout=1.0)
    async with anonymous:
        with pytest.raises(StoreUnavailable):
            await anonymous.get("/lastbackend/helper/projects/tls")


async def test_tree_takes_the_same_tls_flags(tls_etcd: tuple[str, Path]) -> None:
    endpoint, d = tls_etcd
    etcd = await _wait_up(endpoint, d)
    async with etcd:
        await etcd.put("/lastbackend/helper/projects/tls", "an-id")
    cmd = [sys.executable, "-m", "lastbackend.cli", "tree", "--etcd", endpoint,
           "--etcd-ca", str(d / "ca.crt"), "--etcd-cert", str(d / "client.crt"),
           "--etcd-key", str(d / "client.key")]  # fmt: skip
    done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "/lastbackend/helper/projects/tls  an-id" in done.stdout
