"""The stored registry account for a host, in the form the runtime seam takes.

``store.registries.credentials_for`` decrypts the account; the runtime wants a
:class:`~lastbackend.node.runtime.base.RegistryAuth`. The node agent (pulls), staging and builds
(pushes) all need the one from the other, so it is made here once.
"""

from __future__ import annotations

from lastbackend.node.runtime.base import RegistryAuth
from lastbackend.secrets import Secrets
from lastbackend.store.etcd import Etcd
from lastbackend.store.registries import credentials_for


async def registry_auth(etcd: Etcd, secrets: Secrets, host: str) -> RegistryAuth | None:
    """The login for ``host``, or ``None`` without an account; raises ``SecretError`` when the
    stored password was encrypted with another key."""
    found = await credentials_for(etcd, secrets, host)
    return RegistryAuth(found.username, found.password, found.host) if found else None
