"""Vendors: one key per vendor, ``vendors/<vendor>`` (seed 001), and who a push reaches.

The value is seed 001's vendor object as compact JSON, with ``token`` and ``webhook_secret``
holding Fernet tokens from :class:`~lastbackend.secrets.Secrets`: etcd (and every backup of it)
only ever sees ciphertext. Connecting is a PUT: it creates the key compared absent, or replaces
it compared unchanged (``mod_revision``, so ``If-Match`` guards it), retrying a lost race. A
write that changes nothing is skipped; to tell, a secret sent again is compared with the stored
one by decrypting it, because encrypting a value twice gives two different tokens.

The stored token is sent wherever ``scheme://host`` says (clones, API calls), so a PUT that moves
either needs the token again: whoever can write the vendor but does not know its token must not
be able to point it at a host of their own and collect it with the next build.

:func:`subscribers` answers "which services and images build from which repository" for push
webhooks without reading the whole tree: the service index ``helper/apps/<sid> -> <pid>`` and
the image index ``helper/images/<name> -> <iid>`` name every object, and one batched read of
their ``source`` keys gives the sources. Containers, builds and logs are never read.
"""

from __future__ import annotations

import asyncio
import hmac

import attrs

from lastbackend import codec
from lastbackend.codec import FieldError, Invalid
from lastbackend.model.common import now
from lastbackend.model.platform import ServiceSource
from lastbackend.model.vendors import DEFAULT_HOSTS, VENDORS, Vendor, VendorConnect
from lastbackend.secrets import SecretError, Secrets
from lastbackend.store import keys
from lastbackend.store.etcd import KV, Cmp, Etcd, Op, Store
from lastbackend.store.objects import Contention, NotFound, require_version, retries


@attrs.frozen
class Stored:
    """A vendor as read or written, with its version (the key's ``mod_revision``)."""

    vendor: Vendor
    revision: int


def check_known(name: str) -> None:
    """:class:`NotFound` naming the vendors there are, for any other name."""
    if name not in VENDORS:
        raise NotFound(f"unknown vendor {name!r}: the vendors are {', '.join(VENDORS)}")


def _decode(kv: KV) -> Stored:
    return Stored(codec.loads(kv.value, Vendor), kv.mod_revision)


class Vendors:
    """The transactions on vendors, and the decryption of their secrets."""

    def __init__(self, etcd: Store, secrets: Secrets) -> None:
        self.etcd = etcd
        self.secrets = secrets

    async def get(self, name: str) -> Stored:
        check_known(name)
        kv = await self.etcd.get(keys.vendor(name))
        if kv is None:
            raise NotFound(f"vendor {name!r} is not connected")
        return _decode(kv)

    async def all(self) -> tuple[dict[str, Stored], int]:
        """Every connected vendor by name, read at one revision, and that revision."""
        found = await self.etcd.range(keys.VENDORS)
        out = {keys.leaf(kv.key): _decode(kv) for kv in found.kvs}
        return {name: out[name] for name in VENDORS if name in out}, found.revision

    async def connect(
        self, name: str, spec: VendorConnect, *, if_match: int | None = None
    ) -> tuple[Stored, bool]:
        """Create or replace the vendor; the stored vendor, and whether it is new.

        A ``None`` token or webhook secret keeps the stored one; a first connect needs a token.
        """
        check_known(name)
        if spec.vendor is not None and spec.vendor != name:
            raise Invalid([FieldError("vendor", f"must be {name!r}, the vendor in the path")])
        key = keys.vendor(name)
        async for _ in retries():
            kv = await self.etcd.get(key)
            current = _decode(kv) if kv else None
            require_version(f"vendor {name!r}", current.revision if current else 0, if_match)
            wanted = self._apply(name, current.vendor if current else None, spec)
            if current is not None and wanted == current.vendor:
                return current, False
            if current is not None:
                wanted = attrs.evolve(wanted, updated=now())
            result = await self.etcd.txn(
                [Cmp.unchanged(kv, key)], [Op.put(key, codec.dumps(wanted))]
            )
            if result.succeeded:
                return Stored(wanted, result.revision), current is None
        raise Contention(f"vendor {name!r} is changing too fast; try again")

    def _apply(self, name: str, old: Vendor | None, spec: VendorConnect) -> Vendor:
        host = spec.host or DEFAULT_HOSTS[name]
        if spec.token is not None:
            token = self._reuse(old.token if old else "", spec.token)
        elif old is not None:
            if (old.scheme, old.host) != (spec.scheme, host):
                raise Invalid(
                    [
                        FieldError(
                            "token",
                            f"is required again to move the vendor from {old.scheme}://{old.host}"
                            f" to {spec.scheme}://{host}: the stored token is sent there",
                        )
                    ]
                )
            token = old.token
        else:
            raise Invalid([FieldError("token", "is required to connect a vendor")])
        hook = old.webhook_secret if old else ""
        if spec.webhook_secret is not None:
            hook = self._reuse(hook, spec.webhook_secret) if spec.webhook_secret else ""
        t = now()
        return Vendor(
            vendor=name,  # type: ignore[arg-type]  # checked against VENDORS above
            host=host,  # type: ignore[arg-type]
            username=spec.username,
            email=spec.email,
            service_id=spec.service_id,
            token=token,
            token_type=spec.token_type,
            expiry=spec.expiry,
            updated=old.updated if old else t,
            created=old.created if old else t,
            scheme=spec.scheme,
            webhook_secret=hook,
        )

    def _reuse(self, stored: str, clear: str) -> str:
        """``stored`` if it already encrypts ``clear`` (so an unchanged PUT writes nothing), else
        a fresh encryption of ``clear``."""
        if stored:
            try:
                if hmac.compare_digest(self.secrets.decrypt(stored).encode(), clear.encode()):
                    return stored
            except SecretError:
                pass
        return self.secrets.encrypt(clear)

    async def disconnect(self, name: str, *, if_match: int | None = None) -> Stored:
        check_known(name)
        async for _ in retries():
            kv = await self.etcd.get(keys.vendor(name))
            if kv is None:
                raise NotFound(f"vendor {name!r} is not connected")
            current = _decode(kv)
            require_version(f"vendor {name!r}", current.revision, if_match)
            result = await self.etcd.txn([Cmp.unchanged(kv, kv.key)], [Op.delete(kv.key)])
            if result.succeeded:
                return current
        raise Contention(f"vendor {name!r} is changing too fast; try again")

    def token(self, vendor: Vendor) -> str:
        """The clear token; :class:`SecretError` if it was encrypted with another key."""
        return self.secrets.decrypt(vendor.token)

    def webhook_secret(self, vendor: Vendor) -> str:
        """The clear webhook secret, or ``""`` when none is set."""
        return self.secrets.decrypt(vendor.webhook_secret) if vendor.webhook_secret else ""


# who builds from where --------------------------------------------------------------------------


@attrs.frozen
class Subscriber:
    """A service or an image and the source it builds from."""

    kind: str  # "service" | "image"
    id: str
    source: ServiceSource
    project: str = ""  # the service's project


async def subscribers(etcd: Etcd) -> list[Subscriber]:
    """Every service and image that has a source."""
    (_, apps), (_, images) = await asyncio.gather(
        etcd.pairs(keys.HELPER_APPS), etcd.pairs(keys.HELPER_IMAGES)
    )
    services = {
        keys.service_part(pid.decode(), keys.leaf(key.decode()), "source"): (
            pid.decode(),
            keys.leaf(key.decode()),
        )
        for key, pid in apps
    }
    image_ids = {keys.image_part(iid.decode(), "source"): iid.decode() for _, iid in images}
    found_services, found_images = await asyncio.gather(
        etcd.read_many(list(services)) if services else _none(),
        etcd.read_many(list(image_ids)) if image_ids else _none(),
    )
    out: list[Subscriber] = []
    for key, kv in found_services.items():
        pid, sid = services[key]
        out.append(Subscriber("service", sid, codec.loads(kv.value, ServiceSource), pid))
    for key, kv in found_images.items():
        out.append(Subscriber("image", image_ids[key], codec.loads(kv.value, ServiceSource)))
    return out


async def _none() -> dict[str, KV]:
    return {}
