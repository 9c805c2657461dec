"""``GET /api/nodes``, ``/api/routers`` and ``/api/leaders``: who runs what, from the key tree
(read-only).

Nodes.
A node agent keeps ``nodes/<name>`` on its lease, so the key exists while the agent lives; the
pods the services controller assigned stay at ``pods/<node>/<pod>`` for ``node.eviction_timeout``
after it is gone. A node is therefore ``ready`` (its key is there) or ``lost`` (only pods of it
are left: they move elsewhere once the eviction timeout passes).

Routers. Each live router keeps ``system/routers/<name>`` on its lease with the revision of
``projects/`` its loaded config reflects (``store/routers.py``).

Leaders. Each controller (and each node agent, ``node-<name>``) is elected at
``system/leader/<name>``, whose value is the leader's identity (host, pid, a random part) and
which lives on the leader's lease: a name with no key has no leader now. Any API process can
tell, whichever processes run the controllers; ``/readyz`` tells only about its own.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lastbackend import codec
from lastbackend.api.http import doc, json_response, page_body, paging
from lastbackend.api.state import STATE
from lastbackend.model.pods import Node
from lastbackend.store import keys
from lastbackend.store import routers as router_store

routes = web.RouteTableDef()


@routes.get("/api/nodes")
@doc(
    "The nodes: each agent's capacity, state (ready, or lost with pods left) and pod count",
    response="Node",
    paginated=True,
)
async def index(request: web.Request) -> web.Response:
    pg = paging(request)
    etcd = request.app[STATE].etcd
    found = await etcd.range(keys.NODES)
    pods = await etcd.range(keys.PODS, keys_only=True, revision=found.revision)
    counts: dict[str, int] = {}
    for kv in pods.kvs:
        ref = keys.pod_spec_of(kv.key)
        if ref is not None:
            counts[ref.node] = counts.get(ref.node, 0) + 1
    nodes: dict[str, dict[str, Any]] = {}
    for kv in found.kvs:
        node = codec.loads(kv.value, Node)
        nodes[node.name] = {**codec.unstructure(node), "state": "ready"}
    for name in counts.keys() - nodes.keys():
        nodes[name] = {"name": name, "state": "lost"}
    items = [
        {**nodes[name], "pods": counts.get(name, 0)}
        for name in sorted(nodes, reverse=pg.descending)
    ]
    chosen = pg.of(items)
    return json_response(
        page_body(request, pg, len(items), chosen),
        headers={"X-Etcd-Revision": str(found.revision)},
    )


@routes.get("/api/routers")
@doc(
    "The live routers: where each serves, how many hosts, and how far its config has caught up",
    response="Router",
    paginated=True,
)
async def routers(request: web.Request) -> web.Response:
    pg = paging(request)
    revision, found = await router_store.routers(request.app[STATE].etcd)
    items = [codec.unstructure(r) for r in (reversed(found) if pg.descending else found)]
    chosen = pg.of(items)
    return json_response(
        page_body(request, pg, len(items), chosen), headers={"X-Etcd-Revision": str(revision)}
    )


@routes.get("/api/leaders")
@doc(
    "The elected leaders: each controller's and node agent's election key and who holds it",
    response="Leader",
    paginated=True,
)
async def leaders(request: web.Request) -> web.Response:
    pg = paging(request)
    found = await request.app[STATE].etcd.range(keys.LEADERS)
    items = sorted(
        (
            {
                "name": name,
                "leader": kv.value.decode(errors="replace"),
                "since_revision": kv.create_revision,
            }
            for kv in found.kvs
            if (name := keys.entry_of(keys.LEADERS, kv.key)) is not None
        ),
        key=lambda item: item["name"],
        reverse=pg.descending,
    )
    chosen = pg.of(items)
    return json_response(
        page_body(request, pg, len(items), chosen),
        headers={"X-Etcd-Revision": str(found.revision)},
    )
