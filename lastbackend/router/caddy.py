"""Caddy: the JSON config for a route table, and the Caddy process a router supervises.

**Why Caddy.** The data path must not be Python (a proxy written here would cost every request
its latency and drop connections on reload); Caddy loads a whole new config through its admin
API atomically, with no restart, no file and no dropped connection, issues certificates from an
internal CA offline and from ACME when public, and balances and retries across upstreams.
Debian ships it (2.6), so offline installs get it from their own apt sources.

**The config** (:func:`config`) is built whole from the table every time, never patched: a
router that restarted, or a Caddy that was restarted, gets exactly what every other router has.

- Two servers, ``http`` on ``router.http`` and ``https`` on ``router.https``, with the same
  routes; Caddy's automatic HTTPS is off (its redirects would send ``http://`` users to port
  443), and the certificates are named explicitly instead.
- One route per host, exact hosts before wildcards (the table's order), each a
  ``reverse_proxy`` over the service's running containers: round robin, a failed dial retried on
  another upstream for up to :data:`TRY_DURATION`, an upstream that failed a dial skipped for
  :data:`FAIL_DURATION`. SSE and bodies of unknown length are flushed as they come by Caddy's
  own rule, websockets pass through as upgrades. (``flush_interval: -1`` is not set: measured
  with Debian's Caddy 2.6.2, it turns config loads under traffic into 502s and an occasional
  panic, "context: internal error: missing cancel error".) ``X-Forwarded-For``/``-Proto``/
  ``-Host`` are Caddy's own; ``X-Request-Id`` is set to a fresh UUID. A routed host with no
  running container answers 503 saying so.
- Every other host answers 404: no app is served there (never some other app).
- TLS: users' certificates are loaded as given (``tls.certificates.load_pem``) and every other
  routed host's is managed: from the routers' shared internal CA (``pki``, its root and key from
  ``router/ca`` in etcd, so a client trusting ``GET /api/router/ca.pem`` trusts every router), or
  with ``router.acme_email`` set, from ACME for hosts that can have a public certificate.

**The process** (:class:`Caddy`) runs ``caddy run`` with a bootstrap config that only opens the
admin API on a unix socket in the router's data dir; every table is then ``POST /load``-ed.
A Caddy that exits is started again (with backoff) and given the last config. A config Caddy
refuses leaves it serving the previous one: :meth:`Caddy.load` raises :class:`Refused` with
Caddy's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import structlog

from lastbackend.router.table import Route

log = structlog.get_logger("lastbackend.router")

TRY_DURATION = "3s"
TRY_INTERVAL = "50ms"
FAIL_DURATION = "2s"
ADMIN_HOST = "lastbackend-router"
"""The ``Host`` the admin API is asked with (Caddy checks it against ``admin.origins``)."""
INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".test", ".example", ".invalid")
"""Hosts no public CA will sign: always from the internal CA, even with ACME on."""


class CaddyError(RuntimeError):
    """Caddy is not running or its admin API did not answer."""


class Refused(CaddyError):
    """Caddy refused a config (it keeps serving the previous one)."""


@attrs.frozen
class Certificate:
    """A user's certificate for one host: the PEM chain and the clear key."""

    host: str
    chain: str
    key: str = attrs.field(repr=False)


@attrs.frozen
class Paths:
    """Where one router keeps Caddy's files."""

    root: Path

    @property
    def admin_socket(self) -> Path:
        return self.root / "admin.sock"

    @property
    def storage(self) -> Path:
        return self.root / "data"

    @property
    def ca_certificate(self) -> Path:
        return self.root / "ca" / "root.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "root.key"

    @property
    def bootstrap(self) -> Path:
        return self.root / "bootstrap.json"

    @property
    def log(self) -> Path:
        return self.root / "caddy.log"


def public(host: str) -> bool:
    """Whether a public CA could issue for ``host`` (ACME is only asked for these)."""
    bare = host.removeprefix("*.")
    return bare != "localhost" and not bare.endswith(INTERNAL_SUFFIXES)


def admin(paths: Paths) -> dict[str, Any]:
    """The admin section: the same in the bootstrap config and every loaded one, or the admin
    endpoint would move under the router's feet."""
    return {
        "listen": f"unix/{paths.admin_socket}",
        "origins": [ADMIN_HOST],
        "config": {"persist": False},
    }


def config(
    routes: Sequence[Route],
    *,
    http: str,
    https: str,
    paths: Paths,
    certificates: Iterable[Certificate] = (),
    acme_email: str = "",
) -> dict[str, Any]:
    """The whole Caddy config for ``routes`` (see the module docstring)."""
    manual = {c.host: c for c in certificates}
    hosts = [r.host for r in routes]
    managed = sorted({h for h in hosts if h not in manual})
    handlers = [_route(r) for r in routes] + [_unknown()]
    policies: list[dict[str, Any]] = []
    if acme_email:
        acme = [h for h in managed if public(h)]
        if acme:
            issuer = {"module": "acme", "email": acme_email}
            policies.append({"subjects": acme, "issuers": [issuer]})
    policies.append({"issuers": [{"module": "internal"}]})  # every other host
    tls: dict[str, Any] = {"automation": {"policies": policies}, "certificates": {}}
    if managed:
        tls["certificates"]["automate"] = managed
    if manual:
        tls["certificates"]["load_pem"] = [
            {"certificate": c.chain, "key": c.key, "tags": [f"lastbackend:{c.host}"]}
            for c in manual.values()
        ]
    return {
        "admin": admin(paths),
        "storage": {"module": "file_system", "root": str(paths.storage)},
        # ERROR: Caddy warns once per certificate per load that internal ones have no OCSP
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "apps": {
            "pki": {
                "certificate_authorities": {
                    "local": {
                        "name": "lastbackend",
                        "install_trust": False,
                        "root": {
                            "certificate": str(paths.ca_certificate),
                            "private_key": str(paths.ca_key),
                            "format": "pem_file",
                        },
                    }
                }
            },
            "tls": tls,
            "http": {
                "servers": {
                    "http": _server(http, handlers, tls=False),
                    "https": _server(https, handlers, tls=True),
                }
            },
        },
    }


def _server(listen: str, routes: list[dict[str, Any]], *, tls: bool) -> dict[str, Any]:
    server: dict[str, Any] = {
        "listen": [listen],
        "routes": routes,
        "automatic_https": {"disable": True},
    }
    if tls:
        server["tls_connection_policies"] = [{}]
    return server


def _route(route: Route) -> dict[str, Any]:
    if not route.upstreams:
        body = f"{route.service} of project {route.project} has no running instance\n"
        handle: list[dict[str, Any]] = [_static(503, body)]
    else:
        handle = [
            {"handler": "headers", "request": {"set": {"X-Request-Id": ["{http.request.uuid}"]}}},
            {
                "handler": "reverse_proxy",
                "upstreams": [{"dial": u.dial} for u in route.upstreams],
                "load_balancing": {
                    "selection_policy": {"policy": "round_robin"},
                    "try_duration": TRY_DURATION,
                    "try_interval": TRY_INTERVAL,
                },
                "health_checks": {"passive": {"fail_duration": FAIL_DURATION, "max_fails": 1}},
            },
        ]
    return {"match": [{"host": [route.host]}], "handle": handle, "terminal": True}


def _unknown() -> dict[str, Any]:
    return {"handle": [_static(404, "no app is served at {http.request.host}\n")], "terminal": True}


def _static(status: int, body: str) -> dict[str, Any]:
    return {
        "handler": "static_response",
        "status_code": status,
        "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
        "body": body,
    }


class Caddy:
    """One supervised Caddy process and its admin API (see the module docstring)."""

    def __init__(self, binary: str, paths: Paths) -> None:
        self.binary = binary
        self.paths = paths
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.started = asyncio.Event()
        """Set while a Caddy answers on the admin socket."""
        self._session: aiohttp.ClientSession | None = None

    def command(self) -> list[str]:
        path = shutil.which(self.binary)
        if path is None:
            raise CaddyError(
                f"{self.binary!r} is not on PATH: install Debian's caddy package "
                "(apt-get install caddy) or set router.caddy"
            )
        cmd = [path, "run", "--config", str(self.paths.bootstrap)]
        setpriv = shutil.which("setpriv")  # Caddy dies with its router, never orphaned
        return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else cmd

    async def start(self, within: float = 15.0) -> None:
        """Start Caddy and wait until its admin API answers."""
        for directory in (self.paths.root, self.paths.storage, self.paths.ca_certificate.parent):
            directory.mkdir(parents=True, exist_ok=True)
        self.paths.root.chmod(0o700)
        with contextlib.suppress(FileNotFoundError):
            self.paths.admin_socket.unlink()  # a killed Caddy leaves its socket behind
        self.paths.bootstrap.write_text(json.dumps({"admin": admin(self.paths)}))
        cmd = self.command()
        env = {**os.environ, "XDG_DATA_HOME": str(self.paths.storage)}
        env["XDG_CONFIG_HOME"] = str(self.paths.root / "config")
        with self._open_log() as out:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=env
            )
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise CaddyError(f"caddy exited with {self.proc.returncode}: {self._tail()}")
            with contextlib.suppress(CaddyError, aiohttp.ClientError, OSError):
                await self._request("GET", "/config/admin")
                self.started.set()
                log.info("caddy started", pid=self.proc.pid, admin=str(self.paths.admin_socket))
                return
            await asyncio.sleep(0.05)
        raise CaddyError(f"caddy did not open its admin API in {within}s: {self._tail()}")

    async def wait(self) -> int:
        """Until the process exits; its exit status."""
        if self.proc is None:
            raise CaddyError("caddy is not running")
        code = await self.proc.wait()
        self.started.clear()
        return code

    async def load(self, document: Mapping[str, Any]) -> None:
        """Replace the whole config in one atomic load; :class:`Refused` if Caddy says no."""
        await self._request("POST", "/load", json.dumps(document).encode())

    async def config(self) -> Any:
        """The config Caddy runs now (for tests and ``/readyz``)."""
        return json.loads(await self._request("GET", "/config/"))

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        self.started.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        if self._session is None or self._session.closed:
            connector = aiohttp.UnixConnector(path=str(self.paths.admin_socket))
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=60)
            )
        headers = {"Host": ADMIN_HOST, "Content-Type": "application/json"}
        try:
            async with self._session.request(
                method, f"http://{ADMIN_HOST}{path}", data=body, headers=headers
            ) as resp:
                text = await resp.read()
                if resp.status == 400 or (resp.status >= 400 and method == "POST"):
                    raise Refused(_reason(text))
                if resp.status >= 400:
                    raise CaddyError(f"caddy admin {method} {path}: {resp.status} {_reason(text)}")
                return text
        except aiohttp.ClientError as exc:
            raise CaddyError(f"caddy admin API: {exc}") from exc

    def _open_log(self) -> Any:
        return self.paths.log.open("ab")  # a local file: opening it never blocks for long

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.paths.log.read_text(errors="replace")[-1500:]
        return ""


def _reason(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error") or body.decode(errors="replace"))
    except (ValueError, AttributeError):
        return body.decode(errors="replace")[:500]
