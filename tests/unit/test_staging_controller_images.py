"""The staging controller removes droplet images whose droplet is gone, and nothing else.

Controller logic against the fake runtime and a real etcd: a deleted droplet's image goes, a live
droplet's stays, an image a container still uses stays without the controller failing, and the
sweep of each term finds images whose deletion was missed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lastbackend.config import Settings
from lastbackend.controllers.runner import ControllerRunner
from lastbackend.controllers.staging import StagingController
from lastbackend.lifecycle import descriptor
from lastbackend.lifecycle.staging import LABEL_APP, LABEL_DROPLET, droplet_image
from lastbackend.runtime.base import ContainerSpec, ImageConfig
from lastbackend.secrets import Secrets, generate_key
from lastbackend.sources.blobs import BlobStore
from lastbackend.store import installation, keys
from lastbackend.store.etcd import Op
from tests.fakeruntime import FakeRuntime
from tests.support import RawEtcd, eventually

pytestmark = pytest.mark.etcd

APP = "1c4b3e3f-9a6f-4b5c-8b66-6e1c8a8b2d22"
OWNER = f"0b3a2f2e-8f5e-4a4b-9a55-5d0b7f7a1c11:{APP}"
LIVE, GONE, USED = "d-live", "d-gone", "d-used"


def droplet(rt: FakeRuntime, guid: str, *, of: str | None = None) -> str:
    """A droplet image as staging exports it: tagged by guid, labelled with droplet and app,
    and with the id of the installation ``of`` unless it is ``None`` (made before ids)."""
    ref = droplet_image("", APP, guid)
    labels = {LABEL_DROPLET: guid, LABEL_APP: APP}
    if of is not None:
        labels[installation.LABEL] = of
    rt.add_image(ref, ImageConfig(labels=labels))
    return ref


@pytest.fixture
def rt() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def controller(
    etcd: RawEtcd, rt: FakeRuntime, tmp_path: Path, settings: Settings
) -> StagingController:
    blobs, secrets = BlobStore(tmp_path), Secrets(generate_key())
    ctl = StagingController(rt, secrets, blobs, settings, descriptor.load())
    ctl.resync_period = 3600  # the sweep runs at the start of the term only
    return ctl


@pytest.fixture
async def runner(etcd: RawEtcd, controller: StagingController) -> AsyncIterator[ControllerRunner]:
    runner = ControllerRunner(controller, etcd, lease_ttl=2)
    yield runner
    await runner.stop(grace=1)


async def lead(runner: ControllerRunner) -> None:
    runner.start()
    await eventually(lambda: _true(runner.synced))


async def _true(value: bool) -> bool:
    return value


async def present(rt: FakeRuntime, ref: str) -> bool:
    return await rt.inspect_image(ref) is not None


async def test_deleting_a_droplet_removes_its_image_only(
    etcd: RawEtcd, rt: FakeRuntime, controller: StagingController, runner: ControllerRunner
) -> None:
    live, gone = droplet(rt, LIVE), droplet(rt, GONE)
    rt.add_image("busybox:stable")  # not a droplet: never ours to remove
    await rt.tag(gone, "mirror.example/copy:1")  # a second name: both go
    for guid in (LIVE, GONE):
        await etcd.put(keys.droplet_owner(guid), OWNER)
    await lead(runner)
    await controller.sweep()
    assert await present(rt, live)  # both droplets exist
    assert await present(rt, gone)

    await etcd.txn([], [Op.delete(keys.droplet_owner(GONE))])  # what DELETE /v3/droplets does
    await eventually(lambda: _absent(rt, gone))
    assert not await present(rt, "mirror.example/copy:1")
    assert await present(rt, live)
    assert await present(rt, "busybox:stable")


async def _absent(rt: FakeRuntime, ref: str) -> bool:
    return not await present(rt, ref)


async def test_an_image_in_use_is_kept_and_swept_once_free(
    etcd: RawEtcd, rt: FakeRuntime, controller: StagingController, runner: ControllerRunner
) -> None:
    used, orphan, live = droplet(rt, USED), droplet(rt, GONE), droplet(rt, LIVE)
    await rt.run(ContainerSpec(name="lb-app-web", image=used))
    await etcd.put(keys.droplet_owner(LIVE), OWNER)
    await lead(runner)  # the term's first sweep: USED and GONE have no helper key

    await eventually(lambda: _absent(rt, orphan))
    assert await present(rt, used)  # refused by the engine, quietly
    assert await present(rt, live)
    assert runner.synced  # the refusal did not end the term

    await rt.remove("lb-app-web")
    await controller.sweep()
    assert not await present(rt, used)
    assert await present(rt, live)


async def test_the_sweep_spares_young_orphans(
    rt: FakeRuntime, controller: StagingController, runner: ControllerRunner
) -> None:
    """Another installation's droplet, staged just now on a shared engine, is not taken."""
    controller.sweep_grace = 100 * 365 * 86400  # every fake image is younger than that
    orphan = droplet(rt, GONE)
    await lead(runner)
    await controller.sweep()
    assert await present(rt, orphan)


async def test_an_apps_cache_is_kept_within_its_bound_and_goes_with_the_app(
    etcd: RawEtcd, controller: StagingController, runner: ControllerRunner, settings: Settings
) -> None:
    import attrs

    lines: list[str] = []
    controller._keep_cache(APP, b"x" * 10, lines.append)
    assert controller._read_cache(APP) == b"x" * 10
    assert lines[-1].startswith("-----> Cache kept for the next staging")
    controller.settings = attrs.evolve(settings, staging_cache_max_bytes=5)
    controller._keep_cache(APP, b"y" * 10, lines.append)
    assert controller._read_cache(APP) is None  # too big: the old one is not kept either
    assert "Cache not kept" in lines[-1]
    controller._keep_cache(APP, b"z", lines.append)

    await etcd.put(keys.app_owner(APP), OWNER.partition(":")[0])
    await lead(runner)
    await controller.sweep_caches()
    assert controller._read_cache(APP) == b"z"  # the app exists
    await etcd.txn([], [Op.delete(keys.app_owner(APP))])  # what DELETE /v3/apps does
    await controller.sweep_caches()
    assert controller._read_cache(APP) is None


async def test_the_sweep_never_takes_another_installations_droplet(
    etcd: RawEtcd, rt: FakeRuntime, controller: StagingController, runner: ControllerRunner
) -> None:
    """On a shared engine an image labelled with another installation's id is not ours, however
    old; one of our own and an unlabelled one (made before ids existed) are swept."""
    theirs, legacy = droplet(rt, "d-theirs", of="another"), droplet(rt, GONE)
    await lead(runner)
    ours = droplet(rt, "d-ours", of=controller.installation)
    await controller.sweep()
    stored = await etcd.get(keys.INSTALLATION)
    assert stored is not None
    assert controller.installation == stored.value.decode()
    assert await present(rt, theirs)
    assert not await present(rt, legacy)
    assert not await present(rt, ours)
