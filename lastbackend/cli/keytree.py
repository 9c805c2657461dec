"""``lastbackend tree`` and ``routes``: what etcd holds, read with the daemon's own credentials.

Every command that talks to etcd takes the same ``--etcd`` and TLS flags, read into the same
:class:`~lastbackend.config.Settings`, so ``lastbackend tree`` finds whatever the daemon uses
(with no flags: the embedded server's address, and the client certificate the daemon made for it in
``<data_dir>/etcd-tls``, so they need read access to that directory: the daemon's user).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from lastbackend.config import Settings
from lastbackend.model.common import MASK, mask_secrets
from lastbackend.router.daemon import describe, route_table
from lastbackend.secrets import is_token
from lastbackend.store import etcd_tls
from lastbackend.store.etcd import TLS, Etcd


def connect(settings: Settings) -> Etcd:
    """The client for the configured etcd; for the embedded one (no ``--etcd``, no
    ``--etcd-ca``), with the daemon's client certificate, or :class:`etcd_tls.CredentialsError`
    when this user cannot read it."""
    if settings.embedded and settings.etcd_ca is None:
        tls = etcd_tls.client_tls(settings.embedded_tls_dir)
    else:
        tls = TLS(settings.etcd_ca, settings.etcd_cert, settings.etcd_key)
    return Etcd(
        settings.endpoints,
        tls=tls,
        timeout=settings.etcd_timeout,
        watch_thread=settings.etcd_watch_thread,
    )


def _render(value: bytes) -> Any:
    text = value.decode(errors="replace")
    if is_token(text):  # ciphertext at rest
        return MASK
    try:
        return mask_secrets(json.loads(text))
    except json.JSONDecodeError:
        return text


async def tree(settings: Settings, prefix: str, as_json: bool) -> int:
    async with connect(settings) as etcd:
        found = await etcd.range(prefix)
    rows = {kv.key: _render(kv.value) for kv in found.kvs}
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    for key, value in rows.items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        print(f"{key}  {shown}")
    print(f"# {len(rows)} keys at revision {found.revision}", file=sys.stderr)
    return 0


async def routes(settings: Settings, as_json: bool) -> int:
    """``lastbackend routes``: what every router serves now, host by host."""
    async with connect(settings) as etcd:
        table = describe(await route_table(etcd, settings.router_domain))
    if as_json:
        print(json.dumps(table, indent=2))
        return 0
    for route in table:
        upstreams = ", ".join(route["upstreams"]) or "(no running instance: 503)"
        print(f"{route['host']}  ->  {upstreams}    # {route['service']} of {route['project']}")
    print(f"# {len(table)} hosts; any other host: 404", file=sys.stderr)
    return 0
