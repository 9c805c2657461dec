"""From a source (``hub``, ``owner``, ``repo``, ``branch``) to what ``git clone`` needs.

The vendor that serves the hub (see :meth:`Vendor.serves`) gives the URL
``<scheme>://<host>/<owner>/<repo>.git`` and the credentials, sent as HTTP Basic (see
``sources/git.py``; never in the URL or a command line). Each vendor reads an OAuth token under
its own user name, per its documentation:

- GitHub: the account's user name and the token as the password (any non-empty user name works
  for a token; ``x-access-token`` when the vendor has no user name).
- GitLab: the user name ``oauth2`` and the token as the password; GitLab releases before 2024
  refuse an OAuth token under any other user name, and later ones still accept ``oauth2``.
- Bitbucket Cloud: the user name ``x-token-auth`` and the token as the password.

A hub no vendor serves is cloned over public HTTPS without credentials; a vendor's name used as
a hub (``github``) then means its public host.
"""

from __future__ import annotations

import attrs

from lastbackend.model.platform import ServiceSource
from lastbackend.model.vendors import GIT_VENDORS, Vendor, default_host
from lastbackend.secrets import Secrets
from lastbackend.sources.git import GitAuth
from lastbackend.store.etcd import Store
from lastbackend.store.vendors import Vendors

TOKEN_USERS = {"gitlab": "oauth2", "bitbucket": "x-token-auth"}
"""The fixed user name a vendor expects with an OAuth token; GitHub takes the account's."""
GITHUB_TOKEN_USER = "x-access-token"


@attrs.frozen
class Remote:
    """Where to clone from and how. ``repr`` never shows the token (``GitAuth`` hides it)."""

    url: str
    branch: str
    auth: GitAuth | None
    vendor: str | None


def serving(vendors: dict[str, Vendor], hub: str) -> Vendor | None:
    """The connected git vendor that serves ``hub``, if any."""
    for name in GIT_VENDORS:
        vendor = vendors.get(name)
        if vendor is not None and vendor.serves(hub):
            return vendor
    return None


def auth_for(vendor: Vendor, token: str) -> GitAuth:
    user = TOKEN_USERS.get(vendor.vendor) or vendor.username or GITHUB_TOKEN_USER
    return GitAuth(user, token)


async def resolve(etcd: Store, secrets: Secrets, source: ServiceSource) -> Remote:
    """The clone URL and credentials of ``source``; raises ``SecretError`` when the vendor's
    token was encrypted with another key (a clone without it would fail less clearly)."""
    store = Vendors(etcd, secrets)
    stored, _ = await store.all()
    vendor = serving({name: s.vendor for name, s in stored.items()}, source.hub)
    path = f"{source.owner}/{source.repo}.git"
    if vendor is None:
        return Remote(f"https://{default_host(source.hub)}/{path}", source.branch, None, None)
    auth = auth_for(vendor, store.token(vendor))
    return Remote(f"{vendor.scheme}://{vendor.host}/{path}", source.branch, auth, vendor.vendor)
