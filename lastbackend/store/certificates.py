"""Users' certificates, ``certificates/<host>``, and the routers' CA, ``router/ca``.

A certificate's value is ``model.certificates.Certificate`` as compact JSON, with ``private_key``
a Fernet token from :class:`~lastbackend.secrets.Secrets`, as registry passwords are: etcd (and
``etcdctl``, and every backup) holds ciphertext only. The clear key exists in this process only
between a request body and :meth:`Secrets.encrypt`, and in :func:`certificates_for_router`, which
routers call to hand Caddy its certificates.

Every public call is one etcd transaction, in the shapes of ``store/registries.py``:

- put checks the body (``model.certificates.check_certificate``) before any read, so bad input
  never reaches etcd; it creates comparing the key absent, or replaces comparing the
  ``mod_revision`` it read, retrying a lost race; a put of what is stored writes nothing (the key
  is compared by decrypting the stored one, since two encryptions of one key differ);
- delete compares the ``mod_revision`` it read, so ``If-Match`` guards it like a put.

The CA is made once for the whole installation, by whichever process asks first: every router
must serve leaves from one root, or a client that trusts ``/api/router/ca.pem`` would be refused
by the routers that made another. :func:`ensure_ca` stores a new root comparing the key absent;
the processes that lose that race read and use the winner's.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

import attrs

from lastbackend import codec
from lastbackend.codec import FieldError, Invalid
from lastbackend.logsetup import log
from lastbackend.model.certificates import (
    Certificate,
    CertificateBody,
    CertificateProblems,
    Checked,
    RouterCA,
    StoredCA,
    ca_summary,
    check_certificate,
    make_ca,
)
from lastbackend.model.common import now
from lastbackend.model.hosts import check_route_host
from lastbackend.secrets import SecretError, Secrets
from lastbackend.store import keys
from lastbackend.store.etcd import KV, Cmp, Op, Store
from lastbackend.store.objects import (
    Contention,
    NotFound,
    PreconditionFailed,
    require_version,
    retries,
)

__all__ = [
    "Certificates",
    "Listing",
    "RouterCA",
    "Stored",
    "ca_certificate",
    "certificates_for_router",
    "ensure_ca",
]


@attrs.frozen
class Stored:
    """A certificate as read or written, with its version (the key's ``mod_revision``)."""

    certificate: Certificate
    revision: int


@attrs.frozen
class Listing:
    certificates: list[Stored]
    total: int
    revision: int


def _decode(kv: KV) -> Stored:
    return Stored(codec.loads(kv.value, Certificate), kv.mod_revision)


def _stored_host(host: str) -> str | None:
    """``host`` as it would be stored, or ``None`` if no certificate can be stored under it."""
    try:
        return check_route_host(host)
    except ValueError:
        return None


def checked(host: str, body: CertificateBody) -> Checked:
    """The body checked against ``host`` now; :class:`~lastbackend.codec.Invalid` naming each
    bad field, which the API answers with a 422."""
    try:
        return check_certificate(host, body.certificate, body.private_key, at=datetime.now(UTC))
    except CertificateProblems as exc:
        raise Invalid([FieldError(field, reason) for field, reason in exc.problems]) from None


class Certificates:
    """The transactions on users' certificates."""

    def __init__(self, etcd: Store, secrets: Secrets) -> None:
        self.etcd = etcd
        self.secrets = secrets

    async def put(
        self, host: str, body: CertificateBody, *, if_match: int | None = None
    ) -> tuple[Stored, bool]:
        """Store ``body`` for ``host``: (what is stored, whether it was created).

        ``If-Match`` on a host with no certificate is a :class:`PreconditionFailed`: the version
        it names cannot be current.
        """
        spec = checked(host, body)
        key = keys.certificate(spec.host)
        async for _ in retries():
            kv = await self.etcd.get(key)
            current = _decode(kv) if kv is not None else None
            if current is None:
                if if_match is not None:
                    raise PreconditionFailed(f"certificate {spec.host!r} does not exist")
            else:
                require_version("certificate", current.revision, if_match)
                if self._same(current.certificate, spec):
                    return current, False
            t = now()
            created = current.certificate.created if current else t
            wanted = Certificate(
                host=spec.host,
                certificate=spec.certificate,
                private_key=self.secrets.encrypt(spec.private_key),
                subjects=spec.subjects,
                not_before=spec.not_before,
                not_after=spec.not_after,
                issuer=spec.issuer,
                serial=spec.serial,
                fingerprint_sha256=spec.fingerprint_sha256,
                created=created,
                updated=t,
            )
            result = await self.etcd.txn(
                [Cmp.unchanged(kv, key)], [Op.put(key, codec.dumps(wanted))]
            )
            if result.succeeded:
                return Stored(wanted, result.revision), current is None
        raise Contention(f"certificate {spec.host!r} is changing too fast; try again")

    def _same(self, stored: Certificate, spec: Checked) -> bool:
        """Whether ``spec`` is what is stored: the same chain and, decrypted, the same key."""
        if stored.certificate != spec.certificate:
            return False
        try:
            key = self.secrets.decrypt(stored.private_key)
        except SecretError:
            return False  # stored under another key: the put re-encrypts it with this one
        return hmac.compare_digest(key.encode(), spec.private_key.encode())

    async def _read(self, host: str) -> tuple[KV, Stored]:
        stored_host = _stored_host(host)
        kv = await self.etcd.get(keys.certificate(stored_host)) if stored_host else None
        if kv is None:
            raise NotFound(f"certificate {host!r} not found")
        return kv, _decode(kv)

    async def get(self, host: str) -> Stored:
        return (await self._read(host))[1]

    async def list(self, *, page: int, per_page: int, descending: bool = False) -> Listing:
        """One page in host order, every certificate read at one revision."""
        found = await self.etcd.range(keys.CERTIFICATES)
        kvs = found.kvs[::-1] if descending else found.kvs
        chosen = kvs[(page - 1) * per_page : page * per_page]
        return Listing([_decode(kv) for kv in chosen], len(found.kvs), found.revision)

    async def delete(self, host: str, *, if_match: int | None = None) -> Stored:
        async for _ in retries():
            kv, current = await self._read(host)
            require_version("certificate", current.revision, if_match)
            result = await self.etcd.txn([Cmp.unchanged(kv, kv.key)], [Op.delete(kv.key)])
            if result.succeeded:
                return current
        raise Contention(f"certificate {host!r} is changing too fast; try again")


async def certificates_for_router(etcd: Store, secrets: Secrets) -> list[tuple[str, str, str]]:
    """``(host, chain PEM, clear key PEM)`` of every stored certificate, in host order.

    A certificate whose key this process cannot decrypt (another key, a corrupt value) is left
    out and logged, never the key: one bad entry must not stop a router serving every other host.
    """
    found = await etcd.range(keys.CERTIFICATES)
    out = []
    for kv in found.kvs:
        try:
            cert = _decode(kv).certificate
            out.append((cert.host, cert.certificate, secrets.decrypt(cert.private_key)))
        except (SecretError, Invalid, ValueError) as exc:
            log.error("certificate skipped", key=kv.key, revision=kv.mod_revision, error=str(exc))
    return out


def _decode_ca(raw: bytes) -> StoredCA:
    return codec.loads(raw, StoredCA)


async def ensure_ca(etcd: Store, secrets: Secrets) -> RouterCA:
    """The routers' CA, made and stored by the first caller (see the module docstring).

    Raises :class:`~lastbackend.secrets.SecretError` when the stored key was encrypted with
    another key: a router with a CA of its own would serve leaves nobody else's clients trust.
    """
    async for _ in retries():
        kv = await etcd.get(keys.ROUTER_CA)
        if kv is None:
            made = make_ca()
            fingerprint, not_after = ca_summary(made.certificate_pem)
            value = StoredCA(
                certificate=made.certificate_pem,
                private_key=secrets.encrypt(made.private_key_pem),
                fingerprint_sha256=fingerprint,
                not_after=not_after,
                created=now(),
            )
            result = await etcd.txn(
                [Cmp.absent(keys.ROUTER_CA)],
                [Op.put(keys.ROUTER_CA, codec.dumps(value))],
                [Op.get(keys.ROUTER_CA)],
            )
            if result.succeeded:
                log.info("router CA created", fingerprint_sha256=fingerprint)
                return made
            if not result.reads[0]:
                continue  # made and deleted again since: try once more
            kv = result.reads[0][0]  # another process made one first: everyone uses that one
        stored = _decode_ca(kv.value)
        return RouterCA(stored.certificate, secrets.decrypt(stored.private_key))
    raise Contention("the router CA keeps being made and deleted; try again")


async def ca_certificate(etcd: Store) -> str | None:
    """The routers' root certificate (PEM), or ``None`` before any process made one."""
    kv = await etcd.get(keys.ROUTER_CA)
    return None if kv is None else _decode_ca(kv.value).certificate
