"""Entry points: ``lastbackend daemon | api | controller | node | tree | lifecycle | stack |
version``.

Every subcommand that talks to etcd takes the same ``--etcd`` and TLS flags, read into the same
:class:`~lastbackend.config.Settings`, so ``lastbackend tree`` finds whatever the daemon uses
(with no flags: the embedded server's address, and the client certificate the daemon made for it in
``<data_dir>/etcd-tls``, so they need read access to that directory: the daemon's user).

Shutdown follows uvicorn: the first SIGTERM or SIGINT stops accepting connections and lets
in-flight requests finish (up to ``api.shutdown_timeout``), then exits 0; a second one forces.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

import attrs
from aiohttp import web
from prometheus_client import CollectorRegistry

from lastbackend import config, logsetup
from lastbackend.api.app import make_app
from lastbackend.api.middlewares import INFLIGHT, InFlight
from lastbackend.config import ConfigError, Settings
from lastbackend.controllers.build_tag_events import EventsController
from lastbackend.controllers.gc import GarbageCollector
from lastbackend.controllers.runner import Controller, Elected, Manager
from lastbackend.controllers.services import ServicesController
from lastbackend.lifecycle import descriptor as lifecycle_descriptor
from lastbackend.lifecycle.descriptor import Descriptor, DescriptorError
from lastbackend.logsetup import log
from lastbackend.model.common import MASK, mask_secrets
from lastbackend.node.agent import NodeAgent
from lastbackend.router.daemon import Router, describe, route_table
from lastbackend.secrets import Secrets, is_token
from lastbackend.sources.blobs import BlobStore
from lastbackend.store import etcd_tls, keys
from lastbackend.store.embedded import EmbeddedEtcd, EtcdNotFound
from lastbackend.store.etcd import TLS, Etcd, StoreUnavailable

VERSION = "0.1.0"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="TOML settings file (see configs/lastbackend.toml)"
    )
    parser.add_argument(
        "--etcd", dest="etcd_endpoints", help="host:port[,host:port...] (LB_ETCD_ENDPOINTS)"
    )
    parser.add_argument("--etcd-ca", dest="etcd_ca", help="CA certificate for etcd TLS")
    parser.add_argument("--etcd-cert", dest="etcd_cert", help="client certificate for etcd TLS")
    parser.add_argument("--etcd-key", dest="etcd_key", help="client key for etcd TLS")
    parser.add_argument("--log-level", dest="log_level", help="debug, info, warning or error")


def _server(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", help=f"host:port to serve the API on (default {config.DEFAULT_LISTEN})"
    )
    parser.add_argument(
        "--data-dir", dest="data_dir", help="embedded etcd data and blobs (LB_DATA_DIR)"
    )
    parser.add_argument(
        "--token", dest="admin_tokens", help="admin bearer token(s), comma-separated (LB_TOKEN)"
    )
    parser.add_argument(
        "--read-token", dest="read_tokens", help="read-only bearer token(s) (LB_READ_TOKEN)"
    )
    parser.add_argument(
        "--max-streams",
        dest="max_streams",
        help="event streams open at once; more get a 429 (LB_API_MAX_STREAMS; default 256)",
    )
    parser.add_argument(
        "--max-log-follows",
        dest="max_log_follows",
        help="followed logs open at once; more get a 429 (LB_API_MAX_LOG_FOLLOWS; default 64)",
    )


ROLES = {
    "daemon": frozenset({"api", "controller", "node", "router"}),
    "api": frozenset({"api"}),
    "controller": frozenset({"controller"}),
    "node": frozenset({"node"}),
    "router": frozenset({"router"}),
}
"""What each serving subcommand runs."""


def _routing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--router-http", dest="router_http", help="router HTTP address (LB_ROUTER_HTTP)"
    )
    parser.add_argument(
        "--router-https", dest="router_https", help="router HTTPS address (LB_ROUTER_HTTPS)"
    )
    parser.add_argument(
        "--domain",
        dest="router_domain",
        help="platform domain: <service>.<project>.<domain> (LB_DOMAIN; default lb.localhost)",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="lastbackend", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    daemon = sub.add_parser(
        "daemon", help="API, controllers and this host's node agent; embedded etcd unless --etcd"
    )
    api = sub.add_parser("api", help="the REST API only, against --etcd")
    controller = sub.add_parser("controller", help="the controllers only (one leader acts)")
    node = sub.add_parser("node", help="the node agent of this Docker host only")
    router = sub.add_parser(
        "router", help="route every service's hosts through a Caddy this process supervises"
    )
    routes = sub.add_parser("routes", help="print the route table: host -> upstreams")
    tree = sub.add_parser(
        "tree", help="print the /lastbackend key tree, values decoded, secrets masked"
    )
    sub.add_parser("version", help="print the version")
    for p in (daemon, api, controller, node, router, routes, tree):
        _common(p)
    for p in (daemon, api, controller, node, router):
        _server(p)
    for p in (daemon, api, router, routes):
        _routing(p)
    for p in (routes, tree):
        p.add_argument(
            "--data-dir",
            dest="data_dir",
            help="the daemon's data dir, for the embedded etcd's client certificate (LB_DATA_DIR)",
        )
    daemon.add_argument(
        "--no-router", dest="no_router", action="store_true", help="run no router in this process"
    )
    daemon.add_argument(
        "--no-node",
        dest="no_node",
        action="store_true",
        help="run no node agent in this process (the hosts run `lastbackend node`)",
    )
    router.add_argument(
        "--caddy", dest="router_caddy", help="the Caddy binary (LB_ROUTER_CADDY; default: caddy)"
    )
    routes.add_argument("--json", action="store_true", help="the route table as JSON")
    for p in (daemon, api, node):
        p.add_argument(
            "--node-token",
            dest="node_token",
            help="the token API processes and node agents share, never a user's (LB_NODE_TOKEN; "
            "daemon default: one generated in memory)",
        )
    for p in (daemon, node):
        p.add_argument(
            "--name", dest="node_name", help="node name (LB_NODE_NAME; default: host name)"
        )
        p.add_argument(
            "--advertise",
            dest="node_advertise",
            help="URL API processes reach this node at, for logs (LB_NODE_ADVERTISE; "
            "default: http://<listen>)",
        )
    tree.add_argument(
        "prefix", nargs="?", default=keys.ROOT, help="key prefix (default /lastbackend/)"
    )
    tree.add_argument("--json", action="store_true", help="one JSON object {key: value}")
    _lifecycle(sub)
    _stack(sub)
    return top


def _descriptor(parser: argparse.ArgumentParser) -> None:
    """The options of a command that reads the settings and the lifecycle descriptor only."""
    parser.add_argument(
        "--config", type=Path, help="TOML settings file (see configs/lastbackend.toml)"
    )
    parser.add_argument(
        "--descriptor",
        dest="lifecycle_descriptor",
        type=Path,
        help="a lifecycle.toml (LB_LIFECYCLE_DESCRIPTOR; default: the shipped one)",
    )


def _lifecycle(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = sub.add_parser("lifecycle", help="the lifecycle descriptor: inspect it, check APIs")
    actions = top.add_subparsers(dest="lifecycle_command", required=True)
    inspect = actions.add_parser(
        "inspect", help="print the lifecycle version and its deprecated and supported APIs"
    )
    inspect.add_argument(
        "--json", action="store_true", help="the GET /api/lifecycle body: expanded, with labels"
    )
    check = actions.add_parser(
        "check",
        help="may this platform API run this buildpack API? exit 0, 11 (platform API) or 12 "
        "(buildpack API); deprecation warnings per CNB_*_DEPRECATION_MODE",
    )
    check.add_argument(
        "--platform-api",
        dest="check_platform_api",
        help="default: lifecycle.platform_api (CNB_PLATFORM_API), else the newest supported",
    )
    check.add_argument(
        "--buildpack-api", dest="check_buildpack_api", help="a buildpack.toml's api, like 2.1"
    )
    for p in (inspect, check):
        _descriptor(p)


def _stack(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = sub.add_parser("stack", help="stacks (build and run images): build the default, inspect")
    actions = top.add_subparsers(dest="stack_command", required=True)
    build = actions.add_parser(
        "build",
        help="build a stack: busybox offline from busybox-static (idempotent; rebuilt when the "
        "lifecycle descriptor changed), debian with mmdebstrap from this machine's apt sources",
    )
    build.add_argument(
        "--busybox", type=Path, default=Path("/bin/busybox"), help="a statically linked busybox"
    )
    inspect = actions.add_parser(
        "inspect", help="print a stack's images and their lifecycle labels, as pack builder inspect"
    )
    for p in (build, inspect):
        p.add_argument(
            "--name",
            default=None,
            help="busybox, debian or an admin's stack (default: staging.default_stack or busybox)",
        )
        p.add_argument(
            "--docker", help="the Docker engine, like DOCKER_HOST (default: node.docker_host)"
        )
        _descriptor(p)


def settings_from(args: argparse.Namespace) -> Settings:
    flags = {
        name: getattr(args, name, None)
        for name in (
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
    }
    return config.load(file=args.config, flags=flags)


def with_node_token(settings: Settings) -> Settings:
    """``settings`` with a random node token: the daemon's own API and agent share it.

    Kept in memory, never written down: in one process nothing else needs it, a restart rotates
    it, and no file lies about for a local user to read. A file in the data directory would also
    let other processes of this host read the logs without configuration, but not those of other
    hosts, which hides the ``LB_NODE_TOKEN`` a multi-process install needs until it scales out.
    """
    return attrs.evolve(settings, node_token=token_urlsafe(32))


def connect(settings: Settings) -> Etcd:
    """The client for the configured etcd; for the embedded one (no ``--etcd``, no
    ``--etcd-ca``), with the daemon's client certificate, or :class:`etcd_tls.CredentialsError`
    when this user cannot read it."""
    if settings.embedded and settings.etcd_ca is None:
        tls = etcd_tls.client_tls(settings.embedded_tls_dir)
    else:
        tls = TLS(settings.etcd_ca, settings.etcd_cert, settings.etcd_key)
    return Etcd(settings.endpoints, tls=tls, timeout=settings.etcd_timeout)


async def serve(
    settings: Settings,
    *,
    roles: frozenset[str],
    embedded: bool,
    descriptor: Descriptor | None = None,
) -> int:
    etcd_server: EmbeddedEtcd | None = None
    if embedded and settings.embedded:
        etcd_server = EmbeddedEtcd(
            settings.data_dir / "etcd",
            client=settings.embedded_client,
            peer=settings.embedded_peer,
            log=settings.data_dir / "etcd.log",
            tls_dir=settings.embedded_tls_dir,
        )
        log.info(
            "starting embedded etcd", endpoint=etcd_server.endpoint, data_dir=str(settings.data_dir)
        )
        # Spawned on the main thread: PR_SET_PDEATHSIG follows the thread that forked the child,
        # and a worker thread may exit long before the daemon does.
        etcd_server.spawn()
        await asyncio.to_thread(etcd_server.wait_healthy, 30.0)
    try:
        async with connect(settings) as etcd:
            await _run_roles(settings, etcd, roles, descriptor)
    finally:
        if etcd_server is not None:
            await asyncio.to_thread(etcd_server.stop)
            log.info("embedded etcd stopped")
    return 0


def _controllers(
    settings: Settings, roles: frozenset[str], descriptor: Descriptor | None = None
) -> list[Elected]:
    """What the roles run, each under its own election; none holds an etcd client (they get
    a fenced handle from their runner)."""
    controllers: list[Elected] = []
    if "controller" in roles:
        controllers += [
            ServicesController(eviction_timeout=settings.node_eviction_timeout),
            GarbageCollector(BlobStore(settings.blob_dir)),
        ]
        if descriptor is not None:
            controllers.append(_staging(settings, descriptor))
        controllers.append(_builds(settings))
        if settings.amqp_listen is not None or settings.events_forward:
            controllers.append(_events(settings))
    if "node" in roles:
        from lastbackend.runtime.docker import DockerRuntime  # the Docker SDK, only here

        runtime = DockerRuntime(settings.docker_host or None)
        secrets = Secrets.from_settings(settings)
        controllers.append(
            NodeAgent(runtime, secrets, settings.node, address=settings.node_address)
        )
    return controllers


def _staging(settings: Settings, descriptor: Descriptor) -> Controller:
    """Staging runs containers on the Docker engine of the controller's own host."""
    from lastbackend.controllers.staging import StagingController
    from lastbackend.runtime.docker import DockerRuntime  # the Docker SDK, only here

    return StagingController(
        DockerRuntime(settings.docker_host or None),
        Secrets.from_settings(settings),
        BlobStore(settings.blob_dir),
        settings,
        descriptor,
        environ=os.environ,
    )


def _builds(settings: Settings) -> Controller:
    """Builds run ``docker build`` on the Docker engine of the controller's own host."""
    from lastbackend.controllers.builds import BuildsController
    from lastbackend.runtime.docker import DockerRuntime  # the Docker SDK, only here

    return BuildsController(
        DockerRuntime(settings.docker_host or None),
        Secrets.from_settings(settings),
        BlobStore(settings.blob_dir),
        settings,
    )


def _events(settings: Settings) -> EventsController:
    listen = settings.amqp_listen
    if listen is not None and not config.is_loopback(listen[0]):
        log.warning(
            "AMQP events listen on a non-loopback address without authentication: anyone who "
            "can connect reads every build tag",
            amqp_listen=settings.events_amqp_listen,
        )
    return EventsController(listen, settings.events_forward or None)


async def _run_roles(
    settings: Settings, etcd: Etcd, roles: frozenset[str], descriptor: Descriptor | None = None
) -> None:
    registry = CollectorRegistry()
    controllers = _controllers(settings, roles, descriptor)
    manager = Manager(etcd, controllers, registry=registry) if controllers else None
    agent = next((c for c in controllers if isinstance(c, NodeAgent)), None)
    router = (
        Router(etcd, Secrets.from_settings(settings), settings, registry=registry)
        if ("router" in roles)
        else None
    )
    app = make_app(
        settings,
        etcd,
        registry=registry,
        controllers=manager.status if manager is not None else None,
        router=router.status if router is not None else None,
        families="api" in roles,
        logs=agent.open_logs if agent is not None else None,  # serves /node/containers/{id}/logs
        lifecycle=_view(descriptor) if descriptor is not None else None,
        buildpacks=_catalog(settings, descriptor) if descriptor is not None else None,
    )
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()
    host, port = settings.host_port
    await web.TCPSite(runner, host, port, shutdown_timeout=settings.shutdown_timeout).start()
    log.info(
        "listening",
        listen=settings.listen,
        etcd=",".join(settings.endpoints),
        roles=sorted(roles),
        node=settings.node if "node" in roles else None,
    )
    if manager is not None:
        manager.start()
    routing = asyncio.create_task(router.run(), name="router") if router is not None else None
    # What is alive now lives for the whole run: keep it out of every collection, and
    # collect less often (the request path allocates many short-lived objects).
    gc.freeze()
    gc.set_threshold(7000, 10, 10)
    try:
        await _until_signalled(runner, app[INFLIGHT], settings.shutdown_timeout)
    finally:
        if routing is not None:
            routing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await routing
        if manager is not None:
            await manager.stop()
            for controller in controllers:
                runtime = getattr(controller, "runtime", None)
                if runtime is not None:
                    await runtime.close()
    log.info("stopped")


async def _until_signalled(runner: web.AppRunner, inflight: InFlight, grace: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main = asyncio.current_task()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal: forcing shutdown", signal=signal.Signals(signum).name)
            if main is not None:
                main.cancel()
            return
        log.info("draining in-flight requests", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stop.wait()
    for site in list(runner.sites):
        await site.stop()  # no new connections; open ones keep being served
    try:
        await asyncio.wait_for(inflight.idle(), grace)
    except TimeoutError:
        log.warning("shutdown timeout: closing requests still in flight", count=inflight.count)
    await runner.cleanup()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)


def _catalog(settings: Settings, descriptor: Descriptor) -> Callable[[], dict[str, Any]]:
    """Read on every call, so buildpacks added to staging.buildpacks_dir show without a restart."""
    from lastbackend.lifecycle import buildpacks

    return lambda: buildpacks.view(buildpacks.discover(settings.buildpacks_dir), descriptor)


def _view(descriptor: Descriptor) -> Any:
    """The view is computed once: the descriptor never changes while the process runs."""
    view = lifecycle_descriptor.view(descriptor)
    return lambda: view


def load_descriptor(settings: Settings) -> Descriptor:
    """The descriptor in force, its platform API checked: a bad one refuses to start."""
    descriptor = lifecycle_descriptor.load(settings.lifecycle_descriptor)
    api = lifecycle_descriptor.platform_api(descriptor, settings.platform_api)
    result = lifecycle_descriptor.check(descriptor, api, None, os.environ)
    if not result.ok:
        raise DescriptorError(f"lifecycle.platform_api: {result.error}")
    for warning in result.warnings:
        log.warning(warning)
    return descriptor


def lifecycle_command(settings: Settings, args: argparse.Namespace) -> int:
    """``lastbackend lifecycle inspect | check``: no etcd, no server."""
    try:
        descriptor = lifecycle_descriptor.load(settings.lifecycle_descriptor)
    except DescriptorError as exc:
        print(f"lastbackend: {exc}", file=sys.stderr)
        return 2
    if args.lifecycle_command == "inspect":
        if args.json:
            print(json.dumps(lifecycle_descriptor.view(descriptor), indent=2))
        else:
            print(inspect_text(descriptor), end="")
        return 0
    platform = args.check_platform_api or lifecycle_descriptor.platform_api(
        descriptor, settings.platform_api
    )
    result = lifecycle_descriptor.check(descriptor, platform, args.check_buildpack_api, os.environ)
    for warning in result.warnings:
        print(f"Warning: {warning}", file=sys.stderr)
    if result.error is not None:
        print(f"ERROR: {result.error}", file=sys.stderr)
        return result.exit_code
    checked = [f"platform API {platform}"]
    if args.check_buildpack_api is not None:
        checked.append(f"buildpack API {args.check_buildpack_api}")
    print(f"{' and '.join(checked)}: supported by lifecycle {descriptor.version}")
    return result.exit_code


def inspect_text(descriptor: Descriptor) -> str:
    """``pack builder inspect``'s ``Lifecycle:`` block: the lists as the descriptor has them."""

    def listed(entries: Sequence[object]) -> str:
        return ", ".join(map(str, entries)) or "(none)"

    lines = ["Lifecycle:", f"  Version: {descriptor.version}"]
    for title, apis in (("Buildpack", descriptor.buildpack), ("Platform", descriptor.platform)):
        lines += [
            f"  {title} APIs:",
            f"    Deprecated: {listed(apis.deprecated)}",
            f"    Supported: {listed(apis.supported)}",
        ]
    return "\n".join(lines) + "\n"


def stack_command(settings: Settings, args: argparse.Namespace) -> int:
    """``lastbackend stack build | inspect``: the Docker engine only, no etcd."""
    from lastbackend.lifecycle import stacks
    from lastbackend.runtime.base import ContainerRuntimeError
    from lastbackend.runtime.docker import DockerRuntime  # the Docker SDK, only here

    name = args.name or settings.default_stack or stacks.DEFAULT_STACK

    async def run() -> int:
        runtime = DockerRuntime(args.docker or settings.docker_host or None)
        try:
            if args.stack_command == "build":
                descriptor = lifecycle_descriptor.load(settings.lifecycle_descriptor)
                if name == stacks.DEBIAN_STACK:  # always anew: a rebuild picks up updates
                    started = time.monotonic()
                    stack = await stacks.build_debian(runtime, descriptor, log=print)
                    print(f"Built in {time.monotonic() - started:.0f}s")
                else:
                    stack = await stacks.ensure_stack(runtime, name, descriptor, args.busybox)
            else:
                stack = await stacks.inspect(runtime, name)
        finally:
            await runtime.close()
        print(stacks.describe(stack), end="")
        return 0 if stack.present else 1

    try:
        return asyncio.run(run())
    except (DescriptorError, stacks.StackError, ContainerRuntimeError) as exc:
        print(f"lastbackend: {exc}", file=sys.stderr)
        return 2


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


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "version":
        print(VERSION)
        return 0
    roles = ROLES.get(args.command, frozenset())
    if getattr(args, "no_router", False):
        roles = roles - {"router"}
    if getattr(args, "no_node", False):
        roles = roles - {"node"}
    try:
        settings = settings_from(args)
        generated = args.command == "daemon" and "node" in roles and not settings.node_token
        if generated:
            settings = with_node_token(settings)
        if args.command in ROLES:
            settings.check(roles)
    except ConfigError as exc:
        print(f"lastbackend: {exc}", file=sys.stderr)
        return 2
    if args.command == "lifecycle":
        return lifecycle_command(settings, args)
    if args.command == "stack":
        return stack_command(settings, args)
    logsetup.setup(settings.log_level, settings.log_format)
    if generated:
        log.info(
            "no node token configured: generated one in memory for this daemon's API and node "
            "agent; set LB_NODE_TOKEN on every process for other API processes to read this "
            "node's logs"
        )
    elif "node" in roles and not settings.node_token:
        log.warning(
            "no node token configured: no API process can read this node's logs; set "
            "LB_NODE_TOKEN to the same value here and on the API processes"
        )
    descriptor: Descriptor | None = None
    if args.command in ROLES:
        try:
            descriptor = load_descriptor(settings)
        except DescriptorError as exc:
            print(f"lastbackend: {exc}", file=sys.stderr)
            return 2
    try:
        if args.command == "tree":
            return asyncio.run(tree(settings, args.prefix, args.json))
        if args.command == "routes":
            return asyncio.run(routes(settings, args.json))
        return asyncio.run(
            serve(
                settings,
                roles=roles,
                embedded=args.command == "daemon",
                descriptor=descriptor,
            )
        )
    except (EtcdNotFound, etcd_tls.CredentialsError) as exc:
        print(f"lastbackend: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"lastbackend: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
