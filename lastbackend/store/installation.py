"""The installation id: which lastbackend a container, volume or image on a Docker engine is of.

Two installations may share one Docker engine (a test machine, a staging and a production
platform on one host, a second daemon with the same node name), and each must leave the other's
containers alone: an agent that removed every container labelled with its node name and no pod
in *its* tree would stop the other installation's apps. So everything an installation makes on
an engine carries :data:`LABEL` with the id kept in ``system/installation``, made once (compared
absent, so of processes starting together one id wins and all of them read it), and an agent or
sweeper touches only what carries its own id.

Objects made before ids existed carry no such label: :func:`ours` counts them as this
installation's, so an upgraded agent adopts its running containers instead of starting a second
copy of each pod; the next rollout replaces them with labelled ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from lastbackend.store import keys
from lastbackend.store.etcd import Cmp, Op, Store

LABEL = "io.lastbackend.installation"


async def ensure(store: Store) -> str:
    """This installation's id, made and stored at the first call of any of its processes."""
    kv = await store.get(keys.INSTALLATION)
    if kv is not None:
        return kv.value.decode()
    made = uuid.uuid4().hex
    result = await store.txn(
        [Cmp.absent(keys.INSTALLATION)],
        [Op.put(keys.INSTALLATION, made)],
        [Op.get(keys.INSTALLATION)],
    )
    return made if result.succeeded else result.reads[0][0].value.decode()


def ours(labels: Mapping[str, str], installation: str) -> bool:
    """Whether an engine object with ``labels`` is this installation's to adopt or remove."""
    return labels.get(LABEL, installation) == installation
