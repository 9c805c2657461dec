"""What the serving commands run: embedded etcd, the API, the controllers, the node agent, the
router, in one process or a few (``lastbackend daemon | api | controller | node | router``).

Imported only by those commands: it pulls in the whole server side, which a client command such
as ``lastbackend push`` should not pay for at start-up.

Shutdown follows uvicorn: the first SIGTERM or SIGINT stops accepting connections and lets
in-flight requests finish (up to ``api.shutdown_timeout``), then exits 0; a second one forces.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from lastbackend import config, logsetup
from lastbackend.api.app import make_app
from lastbackend.api.middlewares import INFLIGHT, InFlight
from lastbackend.cli.keytree import connect
from lastbackend.config import Settings
from lastbackend.controllers.build_tag_events import EventsController
from lastbackend.controllers.gc import GarbageCollector
from lastbackend.controllers.runner import Controller, Elected, Manager
from lastbackend.controllers.services import ServicesController
from lastbackend.lifecycle import descriptor as lifecycle_descriptor
from lastbackend.lifecycle.descriptor import Descriptor, DescriptorError
from lastbackend.logsetup import log
from lastbackend.node.agent import NodeAgent
from lastbackend.router.daemon import Router
from lastbackend.secrets import Secrets
from lastbackend.sources.blobs import BlobStore
from lastbackend.store.embedded import EmbeddedEtcd
from lastbackend.store.etcd import Etcd


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
        event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
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


def run(command: str, settings: Settings, roles: frozenset[str], *, generated: bool) -> int:
    """Run a serving command to its end: 0 on a clean shutdown, 2 for what refuses to start
    (a bad descriptor, no etcd binary, unreadable client credentials), 1 when etcd is lost."""
    from lastbackend.cli.output import error
    from lastbackend.store import etcd_tls
    from lastbackend.store.embedded import EtcdNotFound
    from lastbackend.store.etcd import StoreUnavailable

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
    try:
        descriptor = load_descriptor(settings)
    except DescriptorError as exc:
        error(str(exc))
        return 2
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            return runner.run(
                serve(settings, roles=roles, embedded=command == "daemon", descriptor=descriptor)
            )
    except (EtcdNotFound, etcd_tls.CredentialsError) as exc:
        error(str(exc))
        return 2
    except StoreUnavailable as exc:
        error(str(exc))
        return 1
    except asyncio.CancelledError:
        return 1


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``daemon.event_loop`` names; ``None`` is asyncio's own."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None
