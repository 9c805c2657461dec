"""Registry accounts: one key per registry, ``registries/<host>`` (DESIGN.md section 4).

The value is seed 001's registry account object as compact JSON, with ``password`` holding a
Fernet token from :class:`~lastbackend.secrets.Secrets`: etcd (and so ``etcdctl`` and every etcd
backup) only ever sees ciphertext. The clear password exists in this process only between a
request body and :meth:`Secrets.encrypt`, and in :func:`credentials_for`, which the node agent
calls to pull a private image.

Every public call is one etcd transaction, in the shapes of ``store/objects.py``:

- create compares the key absent (``create_revision == 0``), so a host has at most one account;
- update reads, changes, and writes back comparing the ``mod_revision`` it read, retrying on a
  lost race; a new host moves the key in the same transaction (the new key compared absent);
- delete compares the ``mod_revision`` it read, so ``If-Match`` guards it like an update.

An account's version (its ETag) is its key's ``mod_revision``. A write that changes nothing is
skipped; to tell, a password sent again is compared with the stored one by decrypting it,
because encrypting the same password twice gives two different tokens.

The password is sent to the account's host at every pull and push, so moving an account to
another host needs the password again in the same request: whoever can write the account but
does not know its password must not be able to send it to a registry of their own.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import attrs

from lastbackend import codec
from lastbackend.codec import FieldError, Invalid
from lastbackend.model.common import now
from lastbackend.model.registries import (
    DOCKER_HUB_ALIASES,
    RegistryAccount,
    RegistryAuth,
    RegistryCreate,
    RegistryPatch,
    check_registry_host,
)
from lastbackend.secrets import SecretError, Secrets
from lastbackend.store import keys
from lastbackend.store.etcd import KV, Cmp, Op, Store
from lastbackend.store.objects import (
    Conflict,
    Contention,
    NotFound,
    require_version,
    retries,
)


@attrs.frozen
class Stored:
    """An account as read or written, with its version (the key's ``mod_revision``)."""

    account: RegistryAccount
    revision: int


@attrs.frozen
class Listing:
    accounts: list[Stored]
    total: int
    revision: int


@attrs.frozen
class RegistryCredentials:
    """What a registry login needs, decrypted. ``repr`` leaves the password out."""

    host: str
    username: str
    password: str = attrs.field(repr=False)
    email: str = ""


def _valid_host(host: str) -> bool:
    try:
        check_registry_host(host)
    except ValueError:
        return False
    return True


def _decode(kv: KV) -> Stored:
    return Stored(codec.loads(kv.value, RegistryAccount), kv.mod_revision)


class Registries:
    """The transactions on registry accounts."""

    def __init__(self, etcd: Store, secrets: Secrets) -> None:
        self.etcd = etcd
        self.secrets = secrets

    async def create(self, spec: RegistryCreate) -> Stored:
        """Store a new account; :class:`Conflict` if the host already has one."""
        t = now()
        account = RegistryAccount(
            spec.email, self.secrets.encrypt(spec.password), spec.username, spec.host, t, t
        )
        key = keys.registry(spec.host)
        result = await self.etcd.txn([Cmp.absent(key)], [Op.put(key, codec.dumps(account))])
        if not result.succeeded:
            raise Conflict(f"registry {spec.host!r} already has an account")
        return Stored(account, result.revision)

    async def _read(self, host: str) -> tuple[KV, Stored]:
        kv = await self.etcd.get(keys.registry(host)) if _valid_host(host) else None
        if kv is None:
            raise NotFound(f"registry account {host!r} not found")
        return kv, _decode(kv)

    async def get(self, host: str) -> Stored:
        return (await self._read(host))[1]

    async def list(self, *, page: int, per_page: int, descending: bool = False) -> Listing:
        """One page in host order, every account read at one revision."""
        found = await self.etcd.range(keys.REGISTRIES)
        kvs = found.kvs[::-1] if descending else found.kvs
        chosen = kvs[(page - 1) * per_page : page * per_page]
        return Listing([_decode(kv) for kv in chosen], len(found.kvs), found.revision)

    async def update(
        self,
        host: str,
        change: Callable[[RegistryAccount], RegistryCreate | RegistryPatch],
        *,
        if_match: int | None = None,
    ) -> Stored:
        """Read-modify-write with retries (Kubernetes' GuaranteedUpdate).

        ``change`` gets the stored account and returns its new fields; a ``None`` password keeps
        the stored one. It may raise to refuse the change, and it can run more than once.
        """
        async for _ in retries():
            kv, current = await self._read(host)
            require_version("registry account", current.revision, if_match)
            wanted = self._apply(current.account, change(current.account))
            if wanted == current.account:
                return current
            wanted = attrs.evolve(wanted, updated=now())
            old_key, new_key = kv.key, keys.registry(wanted.host)
            compare = [Cmp.unchanged(kv, old_key)]
            ops = [Op.put(new_key, codec.dumps(wanted))]
            if new_key != old_key:
                compare.append(Cmp.absent(new_key))
                ops.insert(0, Op.delete(old_key))
            result = await self.etcd.txn(compare, ops, [Op.get(new_key)])
            if result.succeeded:
                return Stored(wanted, result.revision)
            if new_key != old_key and result.reads[0]:
                raise Conflict(f"registry {wanted.host!r} already has an account")
        raise Contention(f"registry account {host!r} is changing too fast; try again")

    def _apply(self, old: RegistryAccount, spec: RegistryCreate | RegistryPatch) -> RegistryAccount:
        if spec.host != old.host and spec.password is None:
            raise Invalid(
                [
                    FieldError(
                        "password",
                        f"is required again to move the account from {old.host} to {spec.host}: "
                        "the stored password is sent there",
                    )
                ]
            )
        token = old.password
        if spec.password is not None and not self._holds(token, spec.password):
            token = self.secrets.encrypt(spec.password)
        return RegistryAccount(
            spec.email, token, spec.username, spec.host, old.created, old.updated
        )

    def _holds(self, token: str, password: str) -> bool:
        """Whether ``token`` decrypts to ``password``; a token of another key never does."""
        try:
            stored = self.secrets.decrypt(token)
        except SecretError:
            return False
        return hmac.compare_digest(stored.encode(), password.encode())

    async def delete(self, host: str, *, if_match: int | None = None) -> Stored:
        async for _ in retries():
            kv, current = await self._read(host)
            require_version("registry account", current.revision, if_match)
            result = await self.etcd.txn([Cmp.unchanged(kv, kv.key)], [Op.delete(kv.key)])
            if result.succeeded:
                return current
        raise Contention(f"registry account {host!r} is changing too fast; try again")


async def credentials_for(etcd: Store, secrets: Secrets, host: str) -> RegistryCredentials | None:
    """The decrypted login for ``host`` (see ``model.registries.registry_host``), or ``None``.

    Host names are case-insensitive, so ``host`` is lowercased; Docker Hub's names are aliases
    of each other. Raises :class:`~lastbackend.secrets.SecretError` when the stored password was
    encrypted with another key: a pull without the credentials would only fail later, and less
    clearly.
    """
    host = host.lower()
    if not _valid_host(host):
        return None
    candidates = [host, *(a for a in DOCKER_HUB_ALIASES if a != host)]
    if host not in DOCKER_HUB_ALIASES:
        candidates = [host]
    found = await etcd.read_many([keys.registry(h) for h in candidates])
    for candidate in candidates:
        kv = found.get(keys.registry(candidate))
        if kv is not None:
            account = _decode(kv).account
            password = secrets.decrypt(account.password)
            return RegistryCredentials(account.host, account.username, password, account.email)
    return None


async def registry_auth(etcd: Store, secrets: Secrets, host: str) -> RegistryAuth | None:
    """The login for ``host`` as the runtime takes it, or ``None`` without an account.

    The node agent (pulls), staging and builds (pushes) all need it, so it is made here once;
    raises ``SecretError`` when the stored password was encrypted with another key.
    """
    found = await credentials_for(etcd, secrets, host)
    return RegistryAuth(found.username, found.password, found.host) if found else None
