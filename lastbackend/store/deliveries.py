"""Push webhook deliveries already taken, so a replayed one queues nothing new.

Git hosts name every delivery (GitHub ``X-GitHub-Delivery``, GitLab ``X-Gitlab-Event-UUID``,
Bitbucket ``X-Request-UUID``) and send the same name again when a delivery is redelivered, by a
user in the host's UI or by anyone who recorded it: a signature stays valid for its body forever.
The first delivery of a name *claims* ``hooks/deliveries/<vendor>/<id>`` (created only if
absent, so two copies arriving at once cannot both queue builds) and then *records* the builds
it queued there; any later copy reads them back instead of queueing its own.

Each key is on a lease of its own, :data:`TTL` long, so the tree keeps only recent deliveries
and nothing has to sweep them. A claim whose handler died before recording stays pending until
its lease ends: copies get a 409 meanwhile, and the builds it queued before dying stay queued.
"""

from __future__ import annotations

import contextlib
import json
import re
from datetime import UTC, datetime
from typing import Any

import attrs

from lastbackend.store import keys
from lastbackend.store.etcd import Cmp, Etcd, Op, StoreError

TTL = 7 * 24 * 3600
"""Seconds a delivery is remembered: past GitHub's three days of redeliveries, with margin."""
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def is_delivery_id(value: str) -> bool:
    """A delivery name safe to be a key segment: UUIDs and the like, no ``/``, 1-128 chars."""
    return bool(_ID.fullmatch(value))


@attrs.frozen
class Seen:
    """What the first copy of a delivery left: its builds, or ``None`` while it still runs."""

    builds: list[dict[str, Any]] | None
    received: str


def _value(builds: list[dict[str, Any]] | None) -> str:
    received = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return json.dumps({"builds": builds, "received": received}, separators=(",", ":"))


def _seen(raw: bytes) -> Seen:
    data = json.loads(raw)
    return Seen(builds=data.get("builds"), received=data.get("received", ""))


@attrs.frozen
class Claim:
    """This process took a delivery first: :meth:`Deliveries.record` its builds under it."""

    key: str
    lease: int


class Deliveries:
    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd

    async def seen(self, vendor: str, delivery: str) -> Seen | None:
        kv = await self.etcd.get(keys.hook_delivery(vendor, delivery))
        return None if kv is None else _seen(kv.value)

    async def claim(self, vendor: str, delivery: str) -> Claim | Seen:
        """Take a delivery, or learn what the copy that took it first left."""
        key = keys.hook_delivery(vendor, delivery)
        lease = await self.etcd.grant(TTL)
        result = await self.etcd.txn(
            [Cmp.absent(key)], [Op.put(key, _value(None), lease=lease.id)], [Op.get(key)]
        )
        if result.succeeded:
            return Claim(key, lease.id)
        with contextlib.suppress(StoreError):  # holds nothing, and would expire by itself
            await self.etcd.revoke(lease.id)
        found = result.reads[0] if result.reads else []
        return _seen(found[0].value) if found else Seen(None, "")

    async def record(self, claim: Claim, builds: list[dict[str, Any]]) -> None:
        """The builds a claimed delivery queued, for its replays (on the claim's lease)."""
        await self.etcd.txn(
            [Cmp.present(claim.key)], [Op.put(claim.key, _value(builds), lease=claim.lease)]
        )
