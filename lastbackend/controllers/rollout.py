"""How a service's rollout stands: pure functions over what the services controller sees.

A rollout is the move to the service's current pod template, its *revision* (``revisions/<n>``,
numbered from 1, a new number whenever the template changes, rollbacks included). Kubernetes'
Deployment rules, with the node agent's health checks as readiness:

- a new container counts (it *serves*, and an old pod may be retired for it) only once it has
  been ready for ``min_ready`` seconds; an old one counts while it is ready;
- ``complete``: ``desired`` new pods serve and no old pod is left;
- ``failed``: not complete ``progress_deadline`` seconds after the revision started; no more new
  pods are made, the old ones keep serving, and ``reason`` says what the new containers do;
- ``progressing`` otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from lastbackend.model.platform import Container
from lastbackend.model.pods import Rollout

HEALTH = "HealthCheckFailed"


def counts(container: Container, *, new: bool, min_ready: float, at: datetime) -> float | None:
    """``None`` if the container serves for the rollout now; else seconds until it may (0: not
    before something changes)."""
    if container.status != "running" or container.ready is False:
        return 0.0
    if not new or container.ready is None:  # an old pod, or an agent from before checks
        return None
    if container.ready_since is None:
        return 0.0
    waited = (at - container.ready_since).total_seconds()
    return None if waited >= min_ready else min_ready - waited


def reason(new_containers: Iterable[Container]) -> str:
    """What the new containers do, in words: why a rollout does not complete."""
    found = list(new_containers)
    if not found:
        return "no new container has started yet"
    crashed = [c for c in found if c.exit_code not in (None, 0) or c.restarts]
    if any(c.reason == HEALTH for c in found):
        worst = max(found, key=lambda c: c.restarts)
        return f"new containers fail their health check ({worst.restarts} restarts)"
    if crashed:
        worst = max(crashed, key=lambda c: c.restarts)
        code = worst.exit_code if worst.exit_code is not None else "?"
        ran = _ran(worst)
        after = f" after {ran} s" if ran is not None else ""
        return f"new containers exit with code {code}{after} ({worst.restarts} restarts)"
    if any(c.ready is False for c in found):
        return "new containers are running but not ready (their health check does not pass)"
    return "waiting for new containers to be ready for min_ready seconds"


def _ran(container: Container) -> int | None:
    """Seconds its last run lasted (the times are to the second, so within one)."""
    if container.started is None or container.finished is None:
        return None
    return max(0, round((container.finished - container.started).total_seconds()))


def state(
    *,
    revision: int,
    started: datetime,
    desired: int,
    serving_new: int,
    old_left: int,
    new_containers: Iterable[Container],
    deadline: float,
    at: datetime,
    previous: Rollout | None,
) -> Rollout:
    """The rollout of ``revision`` now (see the module docstring).

    A rollout that completed stays complete while its revision holds, even if a container dies
    later (that is a crash, not a deploy); a failed one stays failed until a new revision.
    """
    held = previous is not None and previous.revision == revision
    if (
        held
        and previous
        and (
            previous.state == "complete"
            or (previous.state == "failed" and (serving_new < desired or old_left))
        )
    ):
        return Rollout(
            previous.state, revision, serving_new, desired, previous.started, previous.reason
        )
    if serving_new >= desired and not old_left:
        return Rollout("complete", revision, serving_new, desired, started)
    why = reason(new_containers)
    if (at - started).total_seconds() >= deadline:
        return Rollout("failed", revision, serving_new, desired, started, why)
    return Rollout("progressing", revision, serving_new, desired, started, why)
