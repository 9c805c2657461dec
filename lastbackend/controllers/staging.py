"""The staging controller: turns PENDING droplets into runnable images (STAGED) or FAILED ones.

It watches ``helper/droplets/`` (one small key per droplet, ``<guid> -> <pid>:<sid>``) rather than
the whole ``projects/`` tree: a helper key appears when a droplet is created and goes when it is
deleted, which are the two events that need action; every other change is this controller's own
doing. The droplet itself is read from etcd at reconcile time, so a decision never rests on a
stale cache.

One staging is one job (:mod:`~lastbackend.controllers.jobs`: a task bound to the leadership
term), at most ``staging.concurrency`` at once: droplets beyond that stay PENDING until a slot
frees, as queued builds do. A droplet moves to STAGING in a fenced txn when its slot is taken, and
to STAGED/FAILED in a fenced txn guarded by the droplet key being unchanged since then, so a
droplet deleted mid-staging is never written back; deleting it also cancels its job.

Crash safety: a droplet found STAGING with no task of this process (the previous leader died, or
this process restarted) is staged again from its package, after the leftovers of the interrupted
run (containers labelled ``io.lastbackend.staging=<guid>``) are removed. Staging is idempotent:
the droplet's image name is derived from its guid, so a re-run overwrites, never duplicates.

Droplet images (labelled ``io.lastbackend.droplet=<guid>`` by staging) live on the engine of
this host, so deleting a droplet removes its image here too, after its containers; an image a
container still uses is left, and the sweep (one list call at the start of each term and every
resync period) removes every droplet image whose helper key is gone. The sweep spares images
younger than :data:`SWEEP_GRACE`, which may belong to another installation sharing the engine.

Where work happens: bits come from the blob store, git sources are cloned with the git CLI, and
every container operation goes through the :class:`~lastbackend.runtime.base.Runtime` seam,
on the Docker engine of the host the controller runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import tempfile
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import structlog

from lastbackend import codec
from lastbackend.config import Settings
from lastbackend.controllers import hostenv
from lastbackend.controllers.jobs import Jobs
from lastbackend.controllers.runner import Controller, Watch
from lastbackend.lifecycle import stacks
from lastbackend.lifecycle import staging as engine
from lastbackend.lifecycle.buildpacks import discover
from lastbackend.lifecycle.descriptor import Descriptor
from lastbackend.lifecycle.descriptor import view as descriptor_view
from lastbackend.model.apps import (
    BitsPackage,
    BuildpackLifecycle,
    BuildpackStagingResponse,
    DockerCredentials,
    DockerLifecycle,
    DockerPackage,
    DockerStagingResponse,
    Droplet,
    GitCredentials,
    GitPackage,
    Hash,
    Package,
    StagingResponse,
    split_git_url,
)
from lastbackend.model.common import now
from lastbackend.model.platform import ServiceConfig
from lastbackend.runtime.base import (
    ContainerRuntimeError,
    ImageInfo,
    ImageInUse,
    RegistryAuth,
    Runtime,
)
from lastbackend.secrets import Secrets
from lastbackend.sources import git
from lastbackend.sources.blobs import BlobStore
from lastbackend.store import installation, keys
from lastbackend.store.etcd import KV, Cmp, Op
from lastbackend.store.packages import Packages
from lastbackend.store.registries import registry_auth

log = structlog.get_logger("lastbackend.controllers.staging")

RESYNC = 30.0
SWEEP_GRACE = 600.0
"""Seconds a droplet image must have existed before the sweep may take it as an orphan."""


@attrs.frozen
class Job:
    """One droplet to stage, as read when its slot was taken."""

    pid: str
    sid: str
    guid: str
    droplet: Droplet
    kv: KV  # the droplet key as written when it entered STAGING: the final write compares it


class StagingController(Controller):
    name = "staging"
    workers = 2
    resync_period = RESYNC
    sweep_grace = SWEEP_GRACE

    def __init__(
        self,
        runtime: Runtime,
        secrets: Secrets,
        blobs: BlobStore,
        settings: Settings,
        descriptor: Descriptor,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.secrets = secrets
        self.blobs = blobs
        self.settings = settings
        self.descriptor = descriptor
        self.environ = dict(environ or {})
        self.jobs: Jobs[None] = Jobs(self.name, settings.staging_concurrency)
        self.installation = ""  # read at each term's start: see started()

    def watches(self) -> Sequence[Watch]:
        return [Watch(keys.HELPER_DROPLETS, to_key=keys.leaf)]

    async def started(self) -> None:
        """Publish the descriptor staging judges API versions by, for admins reading the tree.

        And read the installation id, which labels the droplet images this installation makes
        so that its sweep never removes another's on a shared engine.
        """
        self.installation = await installation.ensure(self.store)
        view = json.dumps(descriptor_view(self.descriptor), separators=(",", ":"))
        current = await self.store.get(keys.LIFECYCLE_DESCRIPTOR)
        if current is None or current.value != view.encode():
            await self.txn([], [Op.put(keys.LIFECYCLE_DESCRIPTOR, view)])

    def background(self) -> Sequence[Coroutine[Any, Any, None]]:
        return [self.jobs.supervise(), self._sweeper()]

    # reconcile ---------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> float | None:
        guid = key
        running = self.jobs.running(guid)
        owner = self.informer().get(keys.droplet_owner(guid))
        if owner is None:  # deleted: stop its staging, if any, and remove what it left
            await self.jobs.cancel(guid)
            await engine.cleanup(self.runtime, guid)
            await self._remove_images(await self.runtime.images({engine.LABEL_DROPLET: guid}))
            return None
        if running is not None:
            return None
        pid, _, sid = owner.value.decode().partition(":")
        kv = await self.store.get(keys.droplet(pid, sid, guid))
        if kv is None:
            return None  # a helper without its droplet: gc's to remove
        droplet = codec.loads(kv.value, Droplet)
        if droplet.state not in ("PENDING", "STAGING"):
            return None
        if droplet.state == "STAGING":
            log.warning("restaging an interrupted droplet", droplet=guid)
        self.jobs.start(guid, self._run(pid, sid, guid), None, name=f"stage-{guid}")
        return None

    async def _run(self, pid: str, sid: str, guid: str) -> None:
        async with self.jobs.slots:
            job = await self._begin(pid, sid, guid)
            if job is None:
                return
            sink = self._log_sink(guid)
            try:
                async with asyncio.timeout(self.settings.staging_timeout):
                    final = await self._stage(job, sink)
            except (engine.StagingError, stacks.StackError, git.GitError) as exc:
                sink(f"-----> Staging failed: {exc}")
                final = self._failed(job, str(exc))
            except TimeoutError:
                reason = f"staging took longer than {self.settings.staging_timeout:.0f}s"
                sink(f"-----> {reason}")
                final = self._failed(job, reason)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await asyncio.shield(engine.cleanup(self.runtime, guid))
                raise
            except Exception as exc:
                log.exception("staging crashed", droplet=guid)
                sink(f"-----> Staging failed: internal error: {exc}")
                final = self._failed(job, f"internal error while staging: {exc}")
            await engine.cleanup(self.runtime, guid)
            result = await self.txn(
                [Cmp.unchanged(job.kv, job.kv.key)], [Op.put(job.kv.key, codec.dumps(final))]
            )
            if result.succeeded:
                log.info("droplet staged", droplet=guid, state=final.state, error=final.error)
            else:
                log.info("droplet changed while staging; result dropped", droplet=guid)
        if self.queue is not None:
            self.queue.add(guid)  # look again: it may have been deleted meanwhile

    async def _begin(self, pid: str, sid: str, guid: str) -> Job | None:
        """Move the droplet to STAGING; None if it is gone or no longer waits to be staged."""
        key = keys.droplet(pid, sid, guid)
        kv = await self.store.get(key)
        if kv is None:
            return None
        droplet = codec.loads(kv.value, Droplet)
        if droplet.state not in ("PENDING", "STAGING"):
            return None
        staging = attrs.evolve(droplet, state="STAGING", error=None, updated=now())
        result = await self.txn([Cmp.unchanged(kv, key)], [Op.put(key, codec.dumps(staging))])
        if not result.succeeded:
            return None  # changed meanwhile: the requeue after this task looks again
        await engine.cleanup(self.runtime, guid)
        written = KV(key, codec.dumps(staging), kv.create_revision, result.revision, kv.version + 1)
        if droplet.state == "STAGING":
            self._log_sink(guid)("-----> Staging restarted (the previous run was cut off)")
        return Job(pid, sid, guid, staging, written)

    def _failed(self, job: Job, reason: str) -> Droplet:
        return attrs.evolve(job.droplet, state="FAILED", error=reason, updated=now())

    def _log_sink(self, guid: str) -> Callable[[str], None]:
        def sink(line: str) -> None:
            self.blobs.append_log(guid, line, limit=self.settings.staging_max_log_bytes)

        return sink

    # droplet images ---------------------------------------------------------------------------

    async def _sweeper(self) -> None:
        """Sweep now (a new term: deletions may have been missed) and once per resync period."""
        while True:
            try:
                await self.sweep()
                await self.sweep_caches()
            except ContainerRuntimeError as exc:
                log.warning("sweeping droplet images failed", error=str(exc))
            await asyncio.sleep(self.resync_period)

    async def sweep(self) -> None:
        """Remove the local droplet images whose droplet is gone (its helper key absent)."""
        informer = self.informer()
        cutoff = now() - timedelta(seconds=self.sweep_grace)
        orphans = [
            image
            for image in await self.runtime.images({}, keys=[engine.LABEL_DROPLET])
            if installation.ours(image.labels, self.installation)
            and informer.get(keys.droplet_owner(image.labels[engine.LABEL_DROPLET])) is None
            and (image.created is None or image.created <= cutoff)
        ]
        await self._remove_images(orphans)

    async def _remove_images(self, images: Iterable[ImageInfo]) -> None:
        """Untag each image (its last name removes it); one a container uses is left as is."""
        for image in images:
            for ref in image.repo_tags or (image.id,):
                try:
                    await self.runtime.remove_image(ref)
                except ImageInUse:
                    log.info("droplet image in use: kept", image=ref)
                    break
            else:
                log.info("droplet image removed", image=image.repo_tags or image.id)

    # staging -----------------------------------------------------------------------------------

    async def _stage(self, job: Job, sink: Callable[[str], None]) -> Droplet:
        package_kv = await self.store.get(keys.package(job.pid, job.sid, job.droplet.package))
        if package_kv is None:
            raise engine.StagingError("the droplet's package was deleted", None)
        package: Package = codec.loads(package_kv.value, Package)  # type: ignore[arg-type]
        config_kv = await self.store.get(keys.service_part(job.pid, job.sid, "config"))
        config = codec.loads(config_kv.value, ServiceConfig) if config_kv else ServiceConfig()
        env = self.secrets.open_env({**config.env, **job.droplet.environment_variables})
        lifecycle = job.droplet.lifecycle
        if isinstance(lifecycle, DockerLifecycle):
            if not isinstance(package, DockerPackage):
                raise engine.StagingError("the docker lifecycle stages docker packages only", None)
            return await self._stage_docker(job, package, lifecycle, sink)
        assert isinstance(lifecycle, BuildpackLifecycle)
        commit: str | None = None
        if isinstance(package, BitsPackage):
            if package.state != "READY":
                raise engine.StagingError(f"the package is {package.state}, not READY", None)
            app_tar = await asyncio.to_thread(self.blobs.read_package, job.droplet.package)
            digest = package.hash.value
        elif isinstance(package, GitPackage):
            app_tar, commit = await self._clone(package, sink)
            digest = hashlib.sha1(app_tar).hexdigest()
        else:
            raise engine.StagingError("the buildpack lifecycle stages bits and git packages", None)
        stack = lifecycle.data.stack or await stacks.default_stack(
            self.runtime, self.settings.default_stack, engine.top_level_names(app_tar)
        )
        registry = self.settings.platform_registry
        options: dict[str, Any] = {
            "droplet": job.guid,
            "app": job.sid,
            "buildpacks": discover(self.settings.buildpacks_dir),
            "requested": lifecycle.data.buildpack,
            "env": env,
            "descriptor": self.descriptor,
            "platform_api": self.settings.platform_api,
            "environ": self.environ,
            "target": engine.droplet_image(registry, job.sid, job.guid),
            "push_auth": await registry_auth(self.store, self.secrets, registry)
            if registry
            else None,
            "log": sink,
            "ca_bundle": await self._ca_bundle(),
            "build_env": hostenv.build_env(self.settings.staging_build_env),
            "cache": await asyncio.to_thread(self._read_cache, job.sid),
            "labels": {installation.LABEL: self.installation},
            "image_labels": {installation.LABEL: self.installation},
        }
        if stack in stacks.BUILT_HERE:  # an admin's stack is checked by the engine
            await stacks.ensure_stack(self.runtime, stack, self.descriptor, log=sink)
        result = await engine.stage_buildpack(self.runtime, app_tar, stack=stack, **options)
        await asyncio.to_thread(self._keep_cache, job.sid, result.cache, sink)
        response = BuildpackStagingResponse(
            hash=Hash(value=digest),
            buildpack=result.buildpack,
            stack=result.stack,
            process_types=dict(result.process_types),
            commit=commit,
        )
        return _staged(job.droplet, response, result.image, result.ports)

    async def _ca_bundle(self) -> bytes | None:
        try:
            return await asyncio.to_thread(hostenv.ca_bundle, self.settings.staging_ca_certificates)
        except hostenv.CABundleError as exc:
            raise engine.StagingError(str(exc), None) from None

    def _read_cache(self, app: str) -> bytes | None:
        """The app's cache layers from its last staging, if kept."""
        if not self.blobs.exists(CACHES, app):
            return None
        return self.blobs.read(CACHES, app)

    def _keep_cache(self, app: str, cache: bytes | None, sink: Callable[[str], None]) -> None:
        """Keep the new cache layers for the app's next staging, within the size bound."""
        limit = self.settings.staging_cache_max_bytes
        if cache is not None and len(cache) <= limit:
            self.blobs.write(CACHES, app, cache, durable=False)  # lost: the next build is cold
            sink(f"-----> Cache kept for the next staging ({len(cache) / 1e6:.1f} MB)")
            return
        if cache is not None:
            sink(
                f"-----> Cache not kept: {len(cache) / 1e6:.0f} MB is over "
                f"staging.cache_max_bytes ({limit / 1e6:.0f} MB)"
            )
        self.blobs.delete(CACHES, app)

    async def sweep_caches(self) -> None:
        """Remove the cache layers of apps that are gone (the app's helper key absent)."""
        for app in await asyncio.to_thread(self.blobs.names, CACHES):
            if await self.store.get(keys.app_owner(app)) is None:
                await asyncio.to_thread(self.blobs.delete, CACHES, app)
                log.info("app cache removed", app=app)

    async def _stage_docker(
        self,
        job: Job,
        package: DockerPackage,
        lifecycle: DockerLifecycle,
        sink: Callable[[str], None],
    ) -> Droplet:
        auth = None
        creds = Packages(self.store, lambda: self.secrets).clear_credentials(package)
        if isinstance(creds, DockerCredentials) and creds.user:
            server = _login_host(creds.login_server)
            auth = RegistryAuth(creds.user, creds.password, server)
        registry = self.settings.platform_registry
        cache = lifecycle.data.use_caching and bool(registry)
        if lifecycle.data.use_caching and not registry:
            sink("-----> use_caching: no platform registry (registry.platform); staging uncached")
        result = await engine.stage_docker(
            self.runtime,
            package.image,
            auth=auth,
            use_caching=cache,
            cache_target=engine.droplet_image(registry, job.sid, job.guid) if cache else None,
            push_auth=await registry_auth(self.store, self.secrets, registry) if cache else None,
            log=sink,
        )
        response = DockerStagingResponse(
            start_command=result.start_command, image_path=result.image_path, cached=result.cached
        )
        return _staged(job.droplet, response, result.image, result.ports)

    async def _clone(self, package: GitPackage, sink: Callable[[str], None]) -> tuple[bytes, str]:
        url, ref = split_git_url(package.url)
        auth = None
        creds = Packages(self.store, lambda: self.secrets).clear_credentials(package)
        if isinstance(creds, GitCredentials):
            auth = git.GitAuth(creds.user, creds.password or creds.api_key)
        sink(f"-----> Cloning {git.mask_url(url)}" + (f" ({ref})" if ref else ""))
        with tempfile.TemporaryDirectory(prefix="lb-clone-") as tmp:
            checkout = await git.clone(
                url,
                Path(tmp) / "src",
                ref=ref,
                auth=auth,
                max_bytes=self.settings.git_max_checkout_bytes,
            )
            sink(f"       commit {checkout.commit}: {checkout.message}")
            return await asyncio.to_thread(git.tar_tree, checkout.path), checkout.commit


def _staged(
    droplet: Droplet, response: StagingResponse, image: str, ports: Sequence[str]
) -> Droplet:
    """The droplet STAGED: runnable as ``image``, listening on ``ports``."""
    return attrs.evolve(
        droplet,
        state="STAGED",
        error=None,
        staging_response=response,
        image=image,
        ports=list(ports),
        updated=now(),
    )


def _login_host(login_server: str) -> str:
    """``https://index.docker.io/v1/`` -> ``index.docker.io``; empty: the image's registry."""
    rest = login_server.split("://", 1)[-1]
    return rest.split("/", 1)[0].lower()


CACHES = "caches"
"""The blob kind of apps' cache layers (one tar per app, by its guid)."""
