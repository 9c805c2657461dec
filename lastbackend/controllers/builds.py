"""The builds controller: queued builds of services and images become pushed images.

What it watches. Build keys live under ``projects/`` (``services/<sid>/builds/<n>``) and
``images/`` (``images/<iid>/builds/<n>``); the two informers keep only those keys
(:func:`~lastbackend.store.builds.work_key_of` maps every other key to ``None``, so the cache holds
builds alone) and hand out one work key per *target*: ``service:<pid>:<sid>`` or ``image:<iid>``.
A reconcile therefore sees every build of one service or image at once, and the work queue never
runs one target twice at a time, which is what keeps one build per target running.

One running build per target, FIFO. A reconcile starts a job (:mod:`~lastbackend.controllers.jobs`:
a task bound to the leadership term) for the lowest-numbered ``queued`` build of a target that has
none running; later ones wait queued, and the job's end queues the target again, so the next one
starts. At most ``builds.concurrency`` jobs work at once (FIFO too), each under ``builds.timeout``.

Steps, each a fenced txn guarded by the build key being as the task last wrote it, so a cancel or
a delete in between stops the task instead of being overwritten:

- ``fetching``: resolve the source to a clone URL and credentials (the vendor's token) and clone
  the branch with the git CLI (``sources/git.py``); the checkout's commit, subject and author are
  recorded with the next step;
- ``building``: ``docker build`` of the checkout (the Dockerfile at ``builds.dockerfile``),
  through the :class:`~lastbackend.runtime.base.Runtime` seam, tagged by build number, with the
  host's proxies and CA bundle for its ``RUN`` steps (:mod:`~lastbackend.controllers.hostenv`);
- ``pushing``: push to the registry named by the tag, with the account stored for that host;
- ``success``: in the same txn the result is tagged ``untested`` in the build-tag family (see
  :meth:`BuildsController._tag`) and, for a service, its ``image`` key is set to the new tag
  (compared with the service still existing), which the services controller rolls out. A build
  is ``success`` exactly when its tag is there: CI never promotes a build that failed.

Where images go (``<n>`` is the build number)::

    service  <registry.platform>/<project name>/<service name>:<n>
             lastbackend-builds/<project name>/<service name>:<n>   (no platform registry: local)
    image    <name>:<n>                      (a name with a registry host, e.g. hub.example.com/a/b)
             <registry.platform>/<name>:<n>  (a name without one, e.g. team/app)

A tag with no registry host is never pushed: the image stays on this host's engine.

Cancelling: the API writes ``canceled``; the informer delivers it, the reconcile cancels the
task, and cancelling the task stops what it is doing: ``git`` is killed, and the ``docker build``
stream is closed, which makes the engine kill and remove the running step's container.

Crash safety: a build found ``fetching``, ``building`` or ``pushing`` with no task of this
process was cut off (the daemon died, or leadership moved): it is failed with
:data:`INTERRUPTED` and the next queued build of its target starts. Re-running it instead could
build a different commit than the one the build recorded, so the user decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import attrs
import structlog

from lastbackend import codec
from lastbackend.config import Settings
from lastbackend.controllers import hostenv
from lastbackend.controllers.jobs import Jobs
from lastbackend.controllers.leader import NotLeader
from lastbackend.controllers.runner import Controller, Watch
from lastbackend.model.platform import Build, Meta, ServiceSource
from lastbackend.model.repos import ContainerArtifact, PathId, Tag, check_path_id
from lastbackend.runtime.base import ContainerRuntimeError, RegistryAuth, Runtime
from lastbackend.secrets import SecretError, Secrets
from lastbackend.sources import git, vendors
from lastbackend.sources.blobs import BUILD_LOGS, BlobStore
from lastbackend.sources.vendors import Remote
from lastbackend.store import keys
from lastbackend.store.builds import (
    ACTIVE,
    FINAL,
    QUEUED,
    Target,
    advance,
    work_key_of,
)
from lastbackend.store.etcd import KV, Cmp, Op, Store, StoreError
from lastbackend.store.registries import registry_auth
from lastbackend.store.repos import Ids, PlannedPut, Repos

log = structlog.get_logger("lastbackend.controllers.builds")

RESYNC = 30.0
INTERRUPTED = "interrupted: the build controller restarted while this build ran; start it again"
BUILD_LABEL = "io.lastbackend.build"
"""Label of a built image: ``<service or image id>-<build number>``."""
LOCAL_REPOSITORY = "lastbackend-builds"
"""Where a service's builds are tagged when no platform registry is configured."""
TAG = "untested"
"""The build-tag family's tag a successful build gets (CI promotes it from there)."""
TAG_TRIES = 5
"""Plans of the tag for one success txn; a tag that keeps changing after that is left out."""


Resolver = Callable[[Store, Secrets, ServiceSource], Awaitable[Remote]]
"""A source -> where to clone it from and with which credentials (the vendor's token)."""


class BuildFailed(Exception):
    """A step failed for a reason the user can act on; the message says which and why."""


class _Stopped(Exception):
    """The build was changed by someone else (canceled, or deleted with its target)."""


@attrs.define
class _Job:
    target: Target
    number: int
    build: Build
    kv: KV  # the build key as this task last wrote it: every write compares it

    @property
    def key(self) -> str:
        return self.target.key(self.number)


@attrs.define
class _Building:
    """What the job of a target keeps with its task."""

    number: int
    finishing: bool = False  # the final write is under way: the build's end is the task's own


class BuildsController(Controller):
    name = "builds"
    workers = 2
    resync_period = RESYNC

    def __init__(
        self,
        runtime: Runtime,
        secrets: Secrets,
        blobs: BlobStore,
        settings: Settings,
        *,
        resolve: Resolver | None = None,
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.secrets = secrets
        self.blobs = blobs
        self.settings = settings
        self.resolve: Resolver = resolve or vendors.resolve
        self.jobs: Jobs[_Building] = Jobs(self.name, settings.build_concurrency)

    def watches(self) -> Sequence[Watch]:
        return [Watch(keys.PROJECTS, to_key=work_key_of), Watch(keys.IMAGES, to_key=work_key_of)]

    def background(self) -> Sequence[Coroutine[Any, Any, None]]:
        return [self.jobs.supervise()]

    # reconcile ---------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> float | None:
        target = Target.from_work_key(key)
        informer = self.informer(keys.PROJECTS if target.kind == "service" else keys.IMAGES)
        builds = sorted(
            (
                (int(keys.leaf(raw)), informer.decoded(kv, Build), kv)
                for raw, kv in informer.objects(key).items()
            ),
            key=lambda found: found[0],
        )
        running = self.jobs.running(key)
        if running is not None:
            building = running.info
            current = next((b for n, b, _ in builds if n == building.number), None)
            if (current is None or current.status in FINAL) and not building.finishing:
                # canceled by request, or deleted with its service or image: stop the work
                log.info("stopping a build", target=key, build=building.number)
                running.task.cancel()
            return None
        for number, build, kv in builds:
            if build.status in ACTIVE:
                await self._interrupted(target, number, build, kv)
        queued = [number for number, build, _ in builds if build.status == QUEUED]
        if queued:
            number = min(queued)
            job = self._run(target, number)
            self.jobs.start(key, job, _Building(number), name=f"build-{key}-{number}")
        return None

    async def _interrupted(self, target: Target, number: int, build: Build, kv: KV) -> None:
        """Fail a build whose task is gone (compared unchanged: a late write of its own wins)."""
        failed = advance(build, "failed", message=INTERRUPTED)
        key = target.key(number)
        result = await self.txn([Cmp.unchanged(kv, key)], [Op.put(key, codec.dumps(failed))])
        if result.succeeded:
            log.warning("interrupted build failed", target=target.work_key, build=number)
            self._sink(target, number)(f"-----> Build failed: {INTERRUPTED}")

    # one build ---------------------------------------------------------------------------------

    async def _run(self, target: Target, number: int) -> None:
        sink = self._sink(target, number)
        try:
            async with self.jobs.slots:
                job = await self._begin(target, number)
                if job is None:
                    return
                started = time.monotonic()
                timeout = self.settings.build_timeout
                try:
                    async with asyncio.timeout(timeout):
                        await self._build(job, sink)
                except (BuildFailed, git.GitError) as exc:
                    await self._fail(job, str(exc), sink)
                except TimeoutError:
                    await self._fail(job, f"the build took longer than {timeout:g}s", sink)
                except _Stopped:
                    sink("-----> Build stopped: it was canceled or its target deleted")
                except asyncio.CancelledError:
                    sink("-----> Build stopped")
                    raise
                except (NotLeader, StoreError) as exc:
                    # No longer ours to write, or etcd is away: whoever leads next fails it as
                    # interrupted, since no task of theirs runs it.
                    sink(f"-----> Build stopped: {exc}")
                    log.warning(
                        "build cut off", target=target.work_key, build=number, error=str(exc)
                    )
                    return
                except Exception as exc:
                    log.exception("build crashed", target=target.work_key, build=number)
                    await self._fail(job, f"internal error while building: {exc}", sink)
                log.info(
                    "build ended",
                    target=target.work_key,
                    build=number,
                    status=job.build.status,
                    seconds=round(time.monotonic() - started, 3),
                )
        finally:
            if self.queue is not None:
                self.queue.add(target.work_key)  # the next queued build, or a cancel to see

    async def _begin(self, target: Target, number: int) -> _Job | None:
        """Move the build to ``fetching``; None if it is gone or no longer queued."""
        key = target.key(number)
        kv = await self.store.get(key)
        if kv is None:
            return None
        build = codec.loads(kv.value, Build)
        if build.status != QUEUED:
            return None
        job = _Job(target, number, build, kv)
        try:
            await self._advance(job, "fetching")
        except _Stopped:
            return None
        return job

    async def _advance(self, job: _Job, status: str, **fields: str) -> None:
        """Write the next status; :class:`_Stopped` if the build changed since the last write."""
        await self._write(job, advance(job.build, status, **fields), [], [])

    async def _write(self, job: _Job, build: Build, compare: list[Cmp], ops: list[Op]) -> None:
        raw = codec.dumps(build)
        result = await self.txn(
            [Cmp.unchanged(job.kv, job.key), *compare], [Op.put(job.key, raw), *ops]
        )
        if not result.succeeded:
            raise _Stopped(job.target.describe(job.number))
        job.build = build
        job.kv = KV(job.key, raw, job.kv.create_revision, result.revision, job.kv.version + 1)

    async def _fail(self, job: _Job, message: str, sink: Callable[[str], None]) -> None:
        sink(f"-----> Build failed: {message}")
        with contextlib.suppress(_Stopped, NotLeader, StoreError):
            await self._advance(job, "failed", message=message)

    async def _build(self, job: _Job, sink: Callable[[str], None]) -> None:
        target, number = job.target, job.number
        source = await self._source(target)
        sink(
            f"-----> Build {number}: {source.hub}/{source.owner}/{source.repo}, "
            f"branch {source.branch}"
        )
        try:
            remote = await self.resolve(self.store, self.secrets, source)
        except (asyncio.CancelledError, StoreError):
            raise
        except Exception as exc:
            raise BuildFailed(f"resolving the source failed: {exc}") from exc
        sink(f"-----> Cloning {git.mask_url(remote.url)} (branch {remote.branch})")
        with tempfile.TemporaryDirectory(prefix="lb-build-") as tmp:
            checkout = await git.clone(
                remote.url,
                Path(tmp) / "src",
                ref=remote.branch,
                auth=remote.auth,
                max_bytes=self.settings.git_max_checkout_bytes,
            )
            sink(f"       commit {checkout.commit[:12]}: {checkout.message} ({checkout.author})")
            context = await asyncio.to_thread(git.tar_tree, checkout.path)
        await self._advance(
            job,
            "building",
            commit=checkout.commit,
            commit_message=checkout.message,
            committer=_name(checkout.author),
        )

        ref = await self._destination(target, number)
        dockerfile = self.settings.build_dockerfile
        sink(f"-----> Building {ref} from {dockerfile}")
        # what buildpacks get from the host too (staging.build_env, staging.ca_certificates):
        # the proxies' names only in the log
        build_args = hostenv.build_env(self.settings.staging_build_env)
        if build_args:
            sink(f"       build arguments from the host: {', '.join(build_args)}")
        try:
            ca = await asyncio.to_thread(hostenv.ca_bundle, self.settings.staging_ca_certificates)
        except hostenv.CABundleError as exc:
            raise BuildFailed(str(exc)) from None
        if ca is not None:
            where = self.settings.staging_ca_certificates or hostenv.HOST_CA_BUNDLE
            sink(f"       CA bundle for RUN steps: {where} (kept out of the image)")
        try:
            image_id = await self.runtime.build_image(
                context,
                dockerfile,
                ref,
                labels={BUILD_LABEL: target.log_name(number)},
                log=sink,
                build_args=build_args,
                ca_bundle=ca,
            )
        except ContainerRuntimeError as exc:
            raise BuildFailed(str(exc)) from exc
        sink(f"       image {image_id}")

        await self._advance(job, "pushing")
        host = _registry_of(ref)
        if host is None:
            sink("-----> Not pushed: no platform registry is configured (registry.platform)")
        else:
            auth = await self._registry_auth(host)
            sink(f"-----> Pushing {ref}" + (f" as {auth.username}" if auth else ""))
            try:
                digest = await self.runtime.push(ref, auth)
            except ContainerRuntimeError as exc:
                raise BuildFailed(f"push failed: {exc}") from exc
            sink(f"       {digest}")

        await self._succeed(job, ref, self._tag(job, source, ref, host, image_id, sink), sink)

    async def _succeed(
        self, job: _Job, ref: str, tag: tuple[Ids, Tag] | None, sink: Callable[[str], None]
    ) -> None:
        """``success``, for a service its ``image`` key, and the ``untested`` tag, in one txn
        that also compares the target still there: a deleted service is never given an image
        key again, and CI never sees a tag of a build that did not succeed (nor the reverse)."""
        running = self.jobs.running(job.target.work_key)
        building = running.info if running is not None else None
        if building is not None and building.number == job.number:
            building.finishing = True
        done = advance(job.build, "success", message="")
        own: list[Op] = []
        if job.target.kind == "service":
            image_key = keys.service_part(job.target.project, job.target.id, "image")
            own.append(Op.put(image_key, ref))
        try:
            for attempt in itertools.count(1):
                plan = await self._plan_tag(job, tag, sink) if attempt <= TAG_TRIES else None
                compare = [Cmp.present(job.target.meta_key), *(plan.compare if plan else [])]
                try:
                    await self._write(job, done, compare, [*own, *(plan.ops if plan else [])])
                except _Stopped:
                    if plan is None or not await self._unchanged(job):
                        raise
                    continue  # the tag changed between its read and our txn: plan it again
                if tag is not None and plan is not None:
                    ids = tag[0]
                    sink(f"-----> Tagged {TAG}: repos/{ids[0]}/branches/{ids[1]}/tags/{TAG}")
                elif tag is not None:
                    sink(f"       not tagged {TAG}: the tag kept changing; build it again to tag")
                break
        finally:
            if building is not None:
                building.finishing = False
        if job.target.kind == "service":
            sink(f"-----> Build succeeded: the service now runs {ref}")
        else:
            sink(f"-----> Build succeeded: {ref}")

    # reading the target ------------------------------------------------------------------------

    async def _source(self, target: Target) -> ServiceSource:
        kv = await self.store.get(target.source_key)
        if kv is None:
            raise BuildFailed(f"the {target.kind} has no source to build from")
        return codec.loads(kv.value, ServiceSource)

    async def _destination(self, target: Target, number: int) -> str:
        """The tag of the build's image (see the module docstring)."""
        registry = self.settings.platform_registry.rstrip("/")
        if target.kind == "service":
            found = await self.store.read_many([keys.project_meta(target.project), target.meta_key])
            project = found.get(keys.project_meta(target.project))
            service = found.get(target.meta_key)
            if project is None or service is None:
                raise _Stopped(target.describe(number))
            path = (
                f"{codec.loads(project.value, Meta).name}/{codec.loads(service.value, Meta).name}"
            )
            return f"{registry or LOCAL_REPOSITORY}/{path}:{number}"
        kv = await self.store.get(target.meta_key)
        if kv is None:
            raise _Stopped(target.describe(number))
        name = str(json.loads(kv.value).get("name") or "")
        if not name:
            raise BuildFailed("the image has no name to push to")
        if _registry_of(name) is None and registry:
            name = f"{registry}/{name}"
        return f"{name}:{number}"

    async def _registry_auth(self, host: str) -> RegistryAuth | None:
        try:
            return await registry_auth(self.store, self.secrets, host)
        except SecretError as exc:
            raise BuildFailed(f"push failed: the account of registry {host}: {exc}") from exc

    # the build-tag family ----------------------------------------------------------------------

    def _tag(
        self,
        job: _Job,
        source: ServiceSource,
        ref: str,
        host: str | None,
        image_id: str,
        sink: Callable[[str], None],
    ) -> tuple[Ids, Tag] | None:
        """The ``untested`` tag of the result, at ``repos/<owner>.<repo>/branches/<branch>/``.

        The repo id is the source's ``<owner>.<repo>`` and the branch id its branch with ``/``
        spelled ``~`` (ids hold no ``/``; git refuses ``~`` in branch names, so none is
        ambiguous). A pushed image is the tag's ``container`` artifact, its id the image id as
        document 003 recommends. The tag is replaced whole, so it names the latest build of the
        branch. ``None`` when the source gives no valid ids: the build succeeds untagged.
        """
        target, number = job.target, job.number
        ids = (_path_id(f"{source.owner}.{source.repo}"), _path_id(source.branch.replace("/", "~")))
        if ids[0] is None or ids[1] is None:
            sink(f"       not tagged: {source.owner}/{source.repo} or its branch is no repo id")
            return None
        artifacts: dict[PathId, Any] = {}
        if host is not None:
            repository = _repository(ref)[len(host) + 1 :]
            artifacts[PathId(image_id)] = ContainerArtifact(
                registry_url=host, repository=repository, image_id=image_id
            )
        if target.kind == "service":
            url = f"/api/projects/{target.project}/services/{target.id}/builds/{number}"
        else:
            url = f"/api/images/{target.id}/builds/{number}"
        tag = Tag(
            build_id=str(number), build_url=url, commit_id=job.build.commit, artifacts=artifacts
        )
        return (ids[0], ids[1], TAG), tag

    async def _plan_tag(
        self, job: _Job, tag: tuple[Ids, Tag] | None, sink: Callable[[str], None]
    ) -> PlannedPut | None:
        """The tag's share of the success txn; a tag that cannot be planned does not fail the
        build (the image is built and pushed either way): it is logged and left out."""
        if tag is None:
            return None
        try:
            return await Repos(self.store).plan_put(*tag)
        except (asyncio.CancelledError, NotLeader):
            raise
        except Exception as exc:
            log.warning(
                "build not tagged", target=job.target.work_key, build=job.number, error=str(exc)
            )
            sink(f"       not tagged {TAG}: {exc}")
            return None

    async def _unchanged(self, job: _Job) -> bool:
        """Whether the build key is still as this task last wrote it (so a failed txn was the
        tag's compares, not a cancel or a delete)."""
        kv = await self.store.get(job.key)
        return kv is not None and kv.mod_revision == job.kv.mod_revision

    # logs --------------------------------------------------------------------------------------

    def _sink(self, target: Target, number: int) -> Callable[[str], None]:
        name = target.log_name(number)

        def sink(line: str) -> None:
            self.blobs.append_log(
                name, line, kind=BUILD_LOGS, limit=self.settings.build_max_log_bytes
            )

        return sink


def _name(author: str) -> str:
    """``Ada Lovelace <ada@example.com>`` -> ``Ada Lovelace``: the document's ``committer`` is a
    name, and push webhooks give the name alone."""
    return author.split("<", 1)[0].strip() or author.strip()


def _repository(ref: str) -> str:
    """``host/a/b:7`` -> ``host/a/b``."""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    return ref[:colon] if colon > slash else ref


def _registry_of(ref: str) -> str | None:
    """The registry host a reference names explicitly (``127.0.0.1:5000``, ``hub.example.com``,
    ``localhost``), or ``None`` when it names none: then it is not pushed anywhere."""
    first, slash, _ = ref.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first.lower()
    return None


_NOT_ID = re.compile(r"[^A-Za-z0-9._~:+@-]")


def _path_id(value: str) -> str | None:
    """``value`` as a build-tag id (other characters become ``_``), or None if it cannot be."""
    try:
        return check_path_id(_NOT_ID.sub("_", value)[:128])
    except ValueError:
        return None
