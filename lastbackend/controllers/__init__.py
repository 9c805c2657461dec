"""Controllers: level-triggered loops that make the world match the key tree (DESIGN.md section 6).

The framework, in the client-go / controller-runtime shape, on asyncio:

- :mod:`~lastbackend.store.informer` (in the store layer, so the API's read cache uses the same
  code): list + watch a prefix into an in-memory cache, with exactly-once delivery across etcd
  restarts and a relist (deletes included) after compaction;
- :mod:`~lastbackend.controllers.queue`: the de-duplicating work queue with per-key backoff, a
  global rate limit and periodic resync;
- :mod:`~lastbackend.controllers.leader`: one leader per controller on an etcd lease, with
  fencing so a paused ex-leader's writes fail;
- :mod:`~lastbackend.controllers.runner`: the :class:`Controller` base class, the runner that
  ties the three together under leader election with Prometheus metrics, and the
  :class:`Manager` that runs several controllers and stops them cleanly.

A controller module (``services``, ``builds``, ...) subclasses :class:`Controller`; it imports
from ``model`` and ``store``, never from ``api``.
"""

from lastbackend.controllers.leader import LeaderElection, NotLeader
from lastbackend.controllers.queue import QueueShutDown, WorkQueue, resync
from lastbackend.controllers.runner import (
    Controller,
    ControllerMetrics,
    ControllerRunner,
    Manager,
    QueueSettings,
    Watch,
)

__all__ = [
    "Controller",
    "ControllerMetrics",
    "ControllerRunner",
    "LeaderElection",
    "Manager",
    "NotLeader",
    "QueueSettings",
    "QueueShutDown",
    "Watch",
    "WorkQueue",
    "resync",
]
