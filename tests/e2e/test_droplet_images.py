"""Deleting a droplet removes its image from the Docker engine of the staging host.

``lastbackend daemon`` stages uploaded bits for real (as in test_apps), the droplet is deleted
through ``/v3``, and ``docker images`` must no longer list its tag.
"""

from __future__ import annotations

import docker
import pytest

from lastbackend.lifecycle.staging import LABEL_DROPLET
from lastbackend.store import installation, keys
from lastbackend.store.embedded import EmbeddedEtcd
from tests.e2e.harness import Harness, eventually
from tests.e2e.test_apps import SITE, V3, zip_of
from tests.support import RawEtcd

pytestmark = [pytest.mark.docker, pytest.mark.etcd]


def tags(api: docker.APIClient, droplet: str) -> list[str]:
    """What ``docker images`` lists for the droplet: the tags of images labelled with it."""
    found = api.images(filters={"label": [f"{LABEL_DROPLET}={droplet}"]})
    return [tag for image in found for tag in image.get("RepoTags") or []]


async def test_deleting_a_droplet_removes_its_image(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, docker_api: docker.APIClient
) -> None:
    h = harness
    daemon = h.start("daemon", etcd_server.endpoint)
    await h.ready(daemon)
    v3 = V3(h, daemon)
    _, app = await v3.app("tidy")
    package = await v3.call("POST", f"/v3/apps/{app}/packages", {"type": "bits"}, 201)
    await v3.upload(package["guid"], zip_of({"index.html": SITE}))
    droplet = await v3.call("POST", f"/v3/packages/{package['guid']}/droplets", {}, 201)
    staged = await v3.staged(droplet["guid"])
    assert staged["state"] == "STAGED", staged
    assert tags(docker_api, droplet["guid"]) == [staged["image"]]
    assert docker_api.images(name=staged["image"])  # `docker images <tag>` lists it
    labels = docker_api.inspect_image(staged["image"])["Config"]["Labels"]
    made_by = await etcd.get(keys.INSTALLATION)
    assert made_by is not None
    assert labels[installation.LABEL] == made_by.value.decode(), "the sweep's way to tell it ours"

    await v3.call("DELETE", f"/v3/droplets/{droplet['guid']}", expect=204)

    async def removed() -> bool:
        return not docker_api.images(name=staged["image"])

    await eventually(removed, 30, "droplet image removed", explain=h.explain)
    assert tags(docker_api, droplet["guid"]) == []
