"""Environment values as each caller may see them, and as they are stored.

Env values (a service's ``config.env``, an app's ``environment_variables``, a droplet's, the
``env`` of revisions and pod specs) are often passwords: etcd holds each one as a Fernet token
(:meth:`~lastbackend.secrets.Secrets.seal_env`). Admin callers see them in clear, read-only
callers ``***`` for every value, whatever its name; the names stay visible, so a dashboard can
tell what is set. With auth off every caller is an admin: it may write anything, so hiding values
from it would protect nothing.

The key is loaded only when a map has a value, so a process that never meets one creates no key
file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs
from aiohttp import web

from lastbackend.api.roles import role
from lastbackend.api.state import STATE
from lastbackend.model.common import MASK
from lastbackend.secrets import SecretError, Secrets


@attrs.frozen
class EnvView:
    """One caller's view of environment maps, and the sealing of the maps it writes."""

    reveal: bool
    """In clear (admin), or ``***`` for every value (read-only)."""
    key: Callable[[], Secrets]

    def show(self, env: Mapping[str, str], *, strict: bool = True) -> dict[str, str]:
        """``env`` as stored -> as this caller sees it. ``strict=False`` shows a value that
        does not decrypt (another key) as ``***`` instead of raising ``SecretError``."""
        if not self.reveal:
            return {name: MASK for name in env}
        if not env:
            return {}
        secrets = self.key()
        out: dict[str, str] = {}
        for name, value in env.items():
            try:
                out[name] = secrets.open(value)
            except SecretError:
                if strict:
                    raise
                out[name] = MASK
        return out

    def seal(
        self,
        env: Mapping[str, str],
        stored: Mapping[str, str] | None = None,
        *,
        field: str = "environment_variables",
    ) -> dict[str, str]:
        """Clear values from a request -> tokens to store (see ``Secrets.seal_env``)."""
        if not env:
            return {}
        return self.key().seal_env(env, stored, field=field)


def env_view(request: web.Request) -> EnvView:
    state = request.app[STATE]
    admin = role(state.settings, request.headers.get("Authorization", "")) == "admin"
    return EnvView(reveal=admin, key=lambda: state.secrets)
