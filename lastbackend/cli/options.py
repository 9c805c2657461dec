"""The settings flags, one definition each, and how they become :class:`~config.Settings`.

Each flag's parameter name is the settings field it sets (``--etcd`` -> ``etcd_endpoints``), and
:func:`settings_from` hands them to :func:`config.load` as it always did: a flag beats the
environment (``LB_*``), which beats ``--config``'s file, which beats the defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from lastbackend import config
from lastbackend.config import Settings

F = TypeVar("F", bound=Callable[..., Any])

SETTINGS_FLAGS = (
    "etcd_endpoints",
    "etcd_ca",
    "etcd_cert",
    "etcd_key",
    "log_level",
    "listen",
    "data_dir",
    "admin_tokens",
    "read_tokens",
    "node_token",
    "max_streams",
    "max_log_follows",
    "node_name",
    "node_advertise",
    "lifecycle_descriptor",
    "router_http",
    "router_https",
    "router_domain",
    "router_caddy",
)
"""The parameters that are settings; any other parameter is the command's own."""


def settings_from(params: Mapping[str, Any]) -> Settings:
    """Settings from a command's parameters (``lastbackend.cli.parse`` gives them too)."""
    values = dict(params)
    flags = {name: values.get(name) for name in SETTINGS_FLAGS}
    return config.load(file=values.get("config"), flags=flags)


def stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Apply ``decorators`` in reading order: the first one given is the first in ``--help``."""

    def apply(f: F) -> F:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


CONFIG = click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML settings file (see configs/lastbackend.toml)",
)

COMMON = stack(
    CONFIG,
    click.option("--etcd", "etcd_endpoints", help="host:port[,host:port...] (LB_ETCD_ENDPOINTS)"),
    click.option("--etcd-ca", "etcd_ca", help="CA certificate for etcd TLS"),
    click.option("--etcd-cert", "etcd_cert", help="client certificate for etcd TLS"),
    click.option("--etcd-key", "etcd_key", help="client key for etcd TLS"),
    click.option("--log-level", "log_level", help="debug, info, warning or error"),
)

SERVER = stack(
    click.option(
        "--listen", help=f"host:port to serve the API on (default {config.DEFAULT_LISTEN})"
    ),
    click.option("--data-dir", "data_dir", help="embedded etcd data and blobs (LB_DATA_DIR)"),
    click.option(
        "--token", "admin_tokens", help="admin bearer token(s), comma-separated (LB_TOKEN)"
    ),
    click.option("--read-token", "read_tokens", help="read-only bearer token(s) (LB_READ_TOKEN)"),
    click.option(
        "--max-streams",
        "max_streams",
        help="event streams open at once; more get a 429 (LB_API_MAX_STREAMS; default 256)",
    ),
    click.option(
        "--max-log-follows",
        "max_log_follows",
        help="followed logs open at once; more get a 429 (LB_API_MAX_LOG_FOLLOWS; default 64)",
    ),
)

ROUTING = stack(
    click.option("--router-http", "router_http", help="router HTTP address (LB_ROUTER_HTTP)"),
    click.option("--router-https", "router_https", help="router HTTPS address (LB_ROUTER_HTTPS)"),
    click.option(
        "--domain",
        "router_domain",
        help="platform domain: <service>.<project>.<domain> (LB_DOMAIN; default lb.localhost)",
    ),
)

READER_DATA_DIR = click.option(
    "--data-dir",
    "data_dir",
    help="the daemon's data dir, for the embedded etcd's client certificate (LB_DATA_DIR)",
)

NODE_TOKEN = click.option(
    "--node-token",
    "node_token",
    help="the token API processes and node agents share, never a user's (LB_NODE_TOKEN; "
    "daemon default: one generated in memory)",
)

NODE = stack(
    click.option("--name", "node_name", help="node name (LB_NODE_NAME; default: host name)"),
    click.option(
        "--advertise",
        "node_advertise",
        help="URL API processes reach this node at, for logs (LB_NODE_ADVERTISE; "
        "default: http://<listen>)",
    ),
)

DESCRIPTOR = stack(
    CONFIG,
    click.option(
        "--descriptor",
        "lifecycle_descriptor",
        type=click.Path(path_type=Path, dir_okay=False),
        help="a lifecycle.toml (LB_LIFECYCLE_DESCRIPTOR; default: the shipped one)",
    ),
)
"""The options of a command that reads the settings and the lifecycle descriptor only."""
