"""What the services controller should do next for one service: pure functions, no I/O.

The controller calls :func:`plan` on every reconcile with what it sees (desired replicas and
template, the service's pods and whether their containers run, the live nodes) and carries out
the returned :class:`Plan`; the next reconcile, triggered by the writes and by container reports,
takes the next step. Keeping the decision pure makes every rule testable without etcd or Docker:

- pods on nodes that are gone (their lease expired, and ``node.eviction_timeout`` passed) are
  replaced: at once if their containers do not serve, else like an old version, only once
  their replacements serve, so a node cut off from etcd but still serving loses its traffic to
  ready containers only (its replacements surge freely: they take no room on a live node);
- with no rollout under way, missing pods are created and extra ones deleted, newest first;
- a rollout (pods of an older template exist) surges by one: at most ``replicas + 1`` pods, and
  an old pod that serves is removed only while the serving count stays at ``replicas`` or more,
  so a service never drops to zero running while its new pods start (or fail to start);
- old pods that do not serve are removed at once: they add nothing and block the surge.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

from lastbackend.model.pods import Node, Pod

SURGE = 1


@attrs.frozen
class Observed:
    pod: Pod
    running: bool
    order: int = 0
    """The pod key's etcd create revision: which of two pods made in one second came first."""


@attrs.frozen
class Plan:
    create: int = 0
    delete: tuple[Pod, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.create and not self.delete


def _age(o: Observed) -> tuple[object, ...]:
    return (o.pod.created, o.order, o.pod.id)


def _newest_first(pods: Iterable[Observed]) -> list[Observed]:
    return sorted(pods, key=_age, reverse=True)


def _oldest_first(pods: Iterable[Observed]) -> list[Observed]:
    return sorted(pods, key=_age)


def plan(
    replicas: int,
    template: str | None,
    pods: Sequence[Observed],
    live_nodes: set[str],
    terminating: int = 0,
) -> Plan:
    """The next step towards ``replicas`` pods of ``template`` (``None``: no image, no pods).

    ``terminating``: containers of deleted pods still draining on live nodes (the node agent
    takes them out of the routers' upstreams before it stops them); they hold a surge slot
    until they are gone, so a rollout never runs more than ``replicas + 1`` containers. (An
    evicted pod's container is on a lost node: it holds none.)
    """
    lost = [o for o in pods if o.pod.node not in live_nodes]
    alive = [o for o in pods if o.pod.node in live_nodes]
    if template is None or replicas == 0:
        return Plan(delete=tuple(o.pod for o in pods))

    new = [o for o in alive if o.pod.template == template]
    old = [o for o in alive if o.pod.template != template]
    lost_serving = [o for o in lost if o.running]
    delete = [o.pod for o in lost if not o.running]

    if len(new) > replicas:  # scale down: the newest go first
        delete += [o.pod for o in _newest_first(new)[: len(new) - replicas]]
        new = _newest_first(new)[len(new) - replicas :]

    old_idle = [o for o in old if not o.running]
    old_serving = [o for o in old if o.running]
    delete += [o.pod for o in old_idle]

    serving = sum(o.running for o in new) + len(old_serving) + len(lost_serving)
    removable = max(0, serving - replicas)
    evict = _oldest_first(lost_serving)[:removable]  # the lost node's go first
    retire = _oldest_first(old_serving)[: removable - len(evict)]
    delete += [o.pod for o in evict + retire]
    remaining_old = len(old_serving) - len(retire)

    draining = terminating + len(retire)  # a retired pod's container drains before it goes
    limit = replicas + SURGE if remaining_old or draining else replicas
    create = max(0, min(replicas - len(new), limit - len(new) - remaining_old - draining))
    return Plan(create=create, delete=tuple(delete))


def choose_nodes(nodes: Sequence[Node], pods: Iterable[Pod], memory: int, count: int) -> list[str]:
    """Nodes for ``count`` new pods of ``memory`` MB, most free memory first (ties by name).

    Fewer than ``count`` names means the rest do not fit anywhere now; the controller retries
    later, when a node joins or pods go.
    """
    free = {node.name: node.memory for node in nodes}
    for pod in pods:
        if pod.node in free:
            free[pod.node] -= pod.spec.memory
    chosen: list[str] = []
    for _ in range(count):
        fits = [(-room, name) for name, room in free.items() if room >= memory]
        if not fits:
            break
        _, name = min(fits)
        free[name] -= memory
        chosen.append(name)
    return chosen
