"""Fixtures on real servers: an etcd started on free ports for the session, and the API on it.

No test mocks etcd. Tests that need a server skip on a laptop without the binary, and under
``CI=true`` a skip is turned into a failure, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from lastbackend.api.app import make_app
from lastbackend.config import Settings
from lastbackend.store import keys
from lastbackend.store.embedded import EmbeddedEtcd
from tests.support import TEST_KEY, RawEtcd, local_etcd

CI = os.environ.get("CI") == "true"
REPO = Path(__file__).resolve().parent.parent


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run everything: {report.longrepr}"


def new_etcd_server(base: Path) -> EmbeddedEtcd:
    if shutil.which("etcd") is None:
        pytest.skip("the etcd binary is not installed (Debian: etcd-server)")
    return local_etcd(base / "etcd-data", base / "etcd.log")


@pytest.fixture
async def private(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedEtcd, RawEtcd]]:
    """An etcd of the test's own, which it may stop and compact (or count the watchers of),
    and a client on it."""
    server = new_etcd_server(tmp_path)
    server.start()
    try:
        async with RawEtcd([server.endpoint]) as client:
            yield server, client
    finally:
        server.stop()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    """One real etcd for the whole run; tests that stop it must start it again."""
    server = new_etcd_server(tmp_path_factory.mktemp("etcd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def etcd(etcd_server: EmbeddedEtcd) -> AsyncIterator[RawEtcd]:
    """A client on the session server, with ``/lastbackend/`` emptied first."""
    if not etcd_server.running:
        etcd_server.start()
    async with RawEtcd([etcd_server.endpoint]) as client:
        await client.delete_prefix(keys.ROOT)
        yield client


@pytest.fixture
def settings(etcd_server: EmbeddedEtcd, tmp_path: Path) -> Settings:
    """The test etcd, a data dir of the test's own (never the user's), and :data:`TEST_KEY`, so
    controllers and node agents a test starts open what its API encrypted."""
    return Settings(
        etcd_endpoints=(etcd_server.endpoint,),
        data_dir=tmp_path / "data",
        secret_key=TEST_KEY,
        default_stack="busybox",  # not "debian once built": the engine may hold it or not
    )


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def make_client(etcd: RawEtcd, settings: Settings) -> AsyncIterator[ClientFactory]:
    """Start the API on the test etcd with the given settings overrides."""
    clients: list[TestClient[Any, Any]] = []

    async def start(**overrides: Any) -> TestClient[Any, Any]:
        import attrs

        app = make_app(attrs.evolve(settings, **overrides), etcd)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def api(make_client: ClientFactory) -> TestClient[Any, Any]:
    """The API with default settings: loopback, no tokens."""
    return await make_client()


async def dump(etcd: RawEtcd, prefix: str = keys.ROOT) -> dict[str, bytes]:
    """Every key under ``prefix`` with its raw value: what ``etcdctl get --prefix`` shows."""
    return {kv.key: kv.value for kv in (await etcd.range(prefix)).kvs}
