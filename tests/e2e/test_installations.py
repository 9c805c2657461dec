"""Two installations on one Docker engine leave each other's containers alone (real Docker).

Each has its own etcd and its own daemon, and both run a node agent of the *same* name on the
host's engine, the case that used to go wrong: an agent starting up queued every container
labelled with its node name, found no pod for the other installation's in its own tree, and
removed them. Now each container carries its installation's id
(:mod:`lastbackend.store.installation`) and an agent touches only its own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import docker.errors
import pytest

from lastbackend.store import installation, keys
from lastbackend.store.embedded import EmbeddedEtcd
from tests.conftest import new_etcd_server
from tests.e2e.harness import LABEL_SERVICE, Harness, eventually
from tests.e2e.test_containers import App, converged
from tests.support import RawEtcd

pytestmark = [pytest.mark.docker, pytest.mark.etcd]


async def _installation_id(etcd: RawEtcd) -> str:
    kv = await etcd.get(keys.INSTALLATION)
    assert kv is not None, "the daemon's first term stores the installation id"
    return kv.value.decode()


def _state(h: Harness, cid: str) -> tuple[str, str]:
    try:
        info = h.docker.inspect_container(cid)
    except docker.errors.NotFound:
        return "removed", ""
    return info["State"]["Status"], info["Config"]["Labels"].get(installation.LABEL, "")


async def test_an_agent_of_the_same_name_never_touches_another_installations_containers(
    harness: Harness,
    etcd: RawEtcd,
    etcd_server: EmbeddedEtcd,
    tmp_path: Path,
    base_image: str,
) -> None:
    h = harness
    first = h.start("daemon", etcd_server.endpoint)
    await h.ready(first)
    app_a = App(h, first, "shop")
    await app_a.create_project()
    sid_a = await app_a.create_service("web", base_image, replicas=1)
    ids_a = await converged(h, app_a, "web", sid_a, 1)
    id_a = await _installation_id(etcd)
    assert _state(h, ids_a[0]) == ("running", id_a)

    (tmp_path / "other").mkdir()
    server = new_etcd_server(tmp_path / "other")
    h.etcd_servers.append(server)
    server.start()
    # the same node name (the harness gives every daemon h.node), its own tree and data dir
    second = h.start("daemon", server.endpoint, "--data-dir", str(tmp_path / "data-b"))
    await h.ready(second)
    app_b = App(h, second, "shop")
    await app_b.create_project()
    sid_b = await app_b.create_service("web", base_image, replicas=1)
    ids_b = await converged(h, app_b, "web", sid_b, 1)
    async with RawEtcd([server.endpoint]) as other:
        id_b = await _installation_id(other)
    assert id_b != id_a
    assert _state(h, ids_b[0]) == ("running", id_b)

    await asyncio.sleep(3)  # the second agent's first term has queued all it ever will
    assert _state(h, ids_a[0]) == ("running", id_a), "the first installation's container stays"
    assert [c["Id"] for c in h.containers(f"{LABEL_SERVICE}={sid_a}")] == ids_a

    # deleting the second installation's app removes its container only
    await h.call(second, "DELETE", "/api/projects/shop", expect=204)

    async def gone() -> bool:
        return not h.containers(f"{LABEL_SERVICE}={sid_b}")

    await eventually(gone, 30, "the second installation's container removed", explain=h.explain)
    await asyncio.sleep(2)  # the first agent saw the other's container die and go
    assert _state(h, ids_a[0]) == ("running", id_a)
    assert await app_a.reported("web"), "the first installation still reports its container"
