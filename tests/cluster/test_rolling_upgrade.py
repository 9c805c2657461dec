"""The multi-host recipe of docs/operations.md, run: every process from its systemd unit, and a
rolling restart of each process kind, one process at a time, with no failed request.

The processes are started from ``deploy/systemd/`` (:mod:`tests.cluster.units`): each unit's
``ExecStart`` with the environment its ``EnvironmentFile=`` lines give, each process a "host" with
its own ``/etc/lastbackend`` (the shared ``env``, the same everywhere, and its ``<kind>.env``),
its own data directory, and the blob directory shared as the recipe says (one directory, linked
into the API and controller data directories as a mount would be). A restart is what
``systemctl restart`` does: the unit's ``KillSignal``, an exit within ``TimeoutStopSec``, then the
same command again. Every process here runs the same version, so an "upgrade" is a restart; what
the test proves is that taking any one process away, in the documented order, fails nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest

from tests.cluster.etcd_cluster import EtcdCluster
from tests.cluster.harness import EVICTION, Cluster, Engine, RouterLoad, Writer
from tests.cluster.test_process_faults import engines  # noqa: F401 (a fixture: the two engines)
from tests.cluster.units import KINDS, load, read_environment_file, write_environment_file
from tests.e2e.harness import Harness, Proc, console_script
from tests.support import RawEtcd, free_ports

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.etcd]

ORDER = ("controller", "api", "router", "node")
"""The order docs/operations.md gives for a rolling upgrade: controllers first (a standby takes
each election over as the leader resigns), then the API processes, the routers, the nodes."""


def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    for kind in KINDS:
        unit = load(kind)
        copy = tmp_path / unit.path.name
        copy.write_text(unit.path.read_text().replace(unit.exec_start[0], console_script()))
        done = subprocess.run(
            ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"{unit.path.name}: {done.stderr}"
        assert not done.stderr.strip(), f"{unit.path.name}: {done.stderr}"
        assert unit.kill_signal == "SIGTERM", "every process drains or resigns on SIGTERM"
        assert unit.argv() == [kind]


class UnitCluster(Cluster):
    """:class:`Cluster`, every process started from its unit as the recipe installs it."""

    def __init__(self, h: Harness, etcd: EtcdCluster, nodes: list[Engine]) -> None:
        super().__init__(h, ",".join(etcd.endpoints), nodes, [])
        self.etcd_cluster = etcd
        self.blobs = h.tmp / "shared-blobs"  # the NFS mount of the recipe
        self.blobs.mkdir()
        self.secret = h.tmp / "secret.key"
        self.secret.write_text(h.secret_key)
        self.secret.chmod(0o600)
        self._hosts = 0
        self.host_of: dict[int, str] = {}  # pid -> the host a process runs on

    def shared(self) -> dict[str, str]:
        """``/etc/lastbackend/env``, as ``deploy/systemd/env.example`` shows it."""
        tls = self.etcd_cluster.tls
        return {
            "LB_ETCD_ENDPOINTS": self.etcd,
            "LB_ETCD_CA": str(tls.ca),
            "LB_ETCD_CERT": str(tls.cert),
            "LB_ETCD_KEY": str(tls.key),
            "LB_NODE_TOKEN": self.h.node_token,
            "LB_SECRET_KEY_FILE": str(self.secret),
            "LB_DOMAIN": "lb.localhost",
            "LB_ROUTER_HTTP": f"127.0.0.1:{self.router_ports[0]}",
            # the test's own: the offline stack, and a short eviction (see tests.cluster.harness)
            "LB_DEFAULT_STACK": "busybox",
            "LB_LOG_LEVEL": "info",
            "LB_NODE_EVICTION_TIMEOUT": str(EVICTION),
        }

    def from_unit(self, kind: str, own: dict[str, str], host: str | None = None) -> Proc:
        """One process of ``kind`` on a host of its own (``host``: the same host again)."""
        if host is None:
            self._hosts += 1
            host = f"{kind}-{self._hosts}"
        etc, data = self.h.tmp / host / "etc", self.h.tmp / host / "data"
        if not etc.exists():
            etc.mkdir(parents=True)
            data.mkdir()
            if kind in ("api", "controller"):
                (data / "blobs").symlink_to(self.blobs)
        port = int(own.get("LB_LISTEN", f"127.0.0.1:{free_ports(1)[0]}").rsplit(":", 1)[1])
        write_environment_file(etc / "env", self.shared())
        write_environment_file(
            etc / f"{kind}.env", {"LB_LISTEN": f"127.0.0.1:{port}", "LB_DATA_DIR": str(data), **own}
        )
        unit = load(kind)
        base = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
        log = self.h.tmp / f"{len(self.h.procs) + 1:02d}-{host}.log"
        proc = Proc(log, unit.argv(), port, {**base, **unit.environment(etc)})
        self.host_of[proc.pid] = host
        self.h.procs.append(proc)
        return proc

    def start_api(self) -> Proc:
        return self.from_unit("api", {})

    def start_controller(self) -> Proc:
        return self.from_unit("controller", {})

    def start_router(self, index: int) -> Proc:
        own = {
            "LB_ROUTER_HTTP": f"127.0.0.1:{self.router_ports[index]}",
            "LB_ROUTER_HTTPS": f"127.0.0.1:{free_ports(1)[0]}",
        }
        return self.from_unit("router", own)

    def start_node(self, engine: Engine) -> Proc:
        own = {"LB_NODE_NAME": engine.node, "LB_DOCKER_HOST": engine.url}
        proc = self.from_unit("node", own)
        self.nodes[engine.node] = proc
        return proc

    def processes(self, kind: str) -> list[Proc]:
        match kind:
            case "api":
                return self.apis
            case "controller":
                return self.controllers
            case "router":
                return self.routers
        return list(self.nodes.values())

    async def restart(self, kind: str, index: int) -> Proc:
        """``systemctl restart`` of one process: its KillSignal, its exit, the same unit again
        on the same host (same ports, same data)."""
        unit = load(kind)
        procs = self.processes(kind)
        old = procs[index]
        old.proc.send_signal(getattr(signal, unit.kill_signal))
        code = await asyncio.to_thread(old.proc.wait, unit.timeout_stop)
        assert code == 0, f"{old.log.name} exited {code} on {unit.kill_signal}:\n{old.tail()}"
        host = self.host_of[old.pid]
        (own,) = [p for p in (self.h.tmp / host / "etc").iterdir() if p.name != "env"]
        own_env = read_environment_file(own.read_text())
        new = self.from_unit(kind, own_env, host=host)
        if kind == "node":
            self.nodes[own_env["LB_NODE_NAME"]] = new
        else:
            procs[index] = new
        await self.h.ready(new, within=60)
        return new


@pytest.fixture(scope="module")
def cluster(
    etcd_cluster_module: EtcdCluster,
    engines: list[tuple[str, docker.APIClient]],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[UnitCluster]:
    tmp = tmp_path_factory.mktemp("units")
    h = Harness(tmp, engines[0][0], engines[0][1])
    nodes = [Engine(url, api, f"{h.node}-{i}") for i, (url, api) in enumerate(engines)]
    c = UnitCluster(h, etcd_cluster_module, nodes)
    try:
        asyncio.run(c.start())
        yield c
    finally:
        c.cleanup()


@pytest.fixture
async def etcd(etcd_cluster: EtcdCluster) -> AsyncIterator[RawEtcd]:
    async with RawEtcd(etcd_cluster.endpoints, tls=etcd_cluster.tls) as client:
        yield client


async def test_a_rolling_restart_of_every_process_kind_fails_no_request(
    cluster: UnitCluster, etcd: RawEtcd
) -> None:
    c = cluster
    restarted = []
    async with RouterLoad(c.router_ports) as load, Writer(c, "rolling") as writer:
        await asyncio.sleep(2)
        for kind in ORDER:
            for index in range(2):
                await c.restart(kind, index)
                restarted.append(kind)
                await asyncio.sleep(1)  # traffic on the new process before the next goes
        await asyncio.sleep(2)
    print(f"\nrolling restart of {len(restarted)} processes: {load.figure()}; {writer.figure()}")
    assert restarted == [kind for kind in ORDER for _ in range(2)]
    assert load.sent > 100, "the load was steady"
    assert load.failed == 0, f"{load.figure()}: {load.failures[:10]}"
    assert writer.unacknowledged == 0, writer.figure()
    assert writer.acknowledged > 50, writer.figure()
    await writer.verify(etcd)
    await c.converge(30)
    assert not c.twice()
    assert all(p.alive for kind in ORDER for p in c.processes(kind))
