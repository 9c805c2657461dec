"""The serving commands: ``daemon``, ``api``, ``controller``, ``node``, ``router``.

Each checks its settings before anything starts (a refusal exits 2 with the reason), then runs
:func:`lastbackend.cli.serve.run`, imported only here so client commands start fast.
"""

from __future__ import annotations

from typing import Any

import attrs
import click

from lastbackend.cli import options
from lastbackend.cli.output import Failure
from lastbackend.config import ConfigError, Settings

ROLES = {
    "daemon": frozenset({"api", "controller", "node", "router"}),
    "api": frozenset({"api"}),
    "controller": frozenset({"controller"}),
    "node": frozenset({"node"}),
    "router": frozenset({"router"}),
}
"""What each serving subcommand runs."""


def with_node_token(settings: Settings) -> Settings:
    """``settings`` with a random node token: the daemon's own API and agent share it.

    Kept in memory, never written down: in one process nothing else needs it, a restart rotates
    it, and no file lies about for a local user to read. A file in the data directory would also
    let other processes of this host read the logs without configuration, but not those of other
    hosts, which hides the ``LB_NODE_TOKEN`` a multi-process install needs until it scales out.
    """
    from secrets import token_urlsafe

    return attrs.evolve(settings, node_token=token_urlsafe(32))


def _run(command: str, params: dict[str, Any]) -> int:
    roles = ROLES[command]
    if params.get("no_router"):
        roles = roles - {"router"}
    if params.get("no_node"):
        roles = roles - {"node"}
    try:
        settings = options.settings_from(params)
        generated = command == "daemon" and "node" in roles and not settings.node_token
        if generated:
            settings = with_node_token(settings)
        settings.check(roles)
    except ConfigError as exc:
        raise Failure(str(exc), code=2) from None
    from lastbackend.cli import serve  # the whole server side, only for serving commands

    return serve.run(command, settings, roles, generated=generated)


@click.command(help="API, controllers and this host's node agent; embedded etcd unless --etcd")
@options.COMMON
@options.SERVER
@options.ROUTING
@options.NODE_TOKEN
@options.NODE
@click.option("--no-router", "no_router", is_flag=True, help="run no router in this process")
@click.option(
    "--no-node",
    "no_node",
    is_flag=True,
    help="run no node agent in this process (the hosts run `lastbackend node`)",
)
def daemon(**params: Any) -> int:
    return _run("daemon", params)


@click.command(help="the REST API only, against --etcd")
@options.COMMON
@options.SERVER
@options.ROUTING
@options.NODE_TOKEN
def api(**params: Any) -> int:
    return _run("api", params)


@click.command(help="the controllers only (one leader acts)")
@options.COMMON
@options.SERVER
def controller(**params: Any) -> int:
    return _run("controller", params)


@click.command(help="the node agent of this Docker host only")
@options.COMMON
@options.SERVER
@options.NODE_TOKEN
@options.NODE
def node(**params: Any) -> int:
    return _run("node", params)


@click.command(help="route every service's hosts through a Caddy this process supervises")
@options.COMMON
@options.SERVER
@options.ROUTING
@click.option("--caddy", "router_caddy", help="the Caddy binary (LB_ROUTER_CADDY; default: caddy)")
def router(**params: Any) -> int:
    return _run("router", params)


COMMANDS = (daemon, api, controller, node, router)
