"""The staging engine: an app's files or a docker image in, a runnable image out.

Pure machinery over the :class:`~lastbackend.runtime.base.Runtime` seam, with no etcd: the
staging controller reads droplets and packages, calls :func:`stage_buildpack` or
:func:`stage_docker`, and writes what they return. Both take a ``log`` callable that receives the
staging output line by line, in the Cloud Foundry / Heroku style (``-----> Detecting``), and both
raise :class:`StagingError` with a message meant for the user (never holding a password) and,
for lifecycle failures, the exit code upstream's lifecycle would use.

**Buildpack lifecycle** (:func:`stage_buildpack`), on a stack (:mod:`.stacks`):

1. *Platform API*: the descriptor judges the platform API in force (unsupported: exit 11;
   deprecated: warn into the log, fail or stay silent by ``CNB_PLATFORM_DEPRECATION_MODE``).
2. *Detect*, in a container of the build image named ``lb-staging-<droplet>-detect``: the app
   is put at ``/workspace`` (owned by the stack's user), each candidate at
   ``/cnb/buildpacks/<id, / as _>/``, the droplet's environment in ``/platform/env/`` (and in
   the environment, unless the buildpack says ``clear-env``). Candidates are the requested
   buildpack alone, or all of them in detection order (:mod:`.buildpacks`); those whose
   ``[[targets]]`` (or deprecated ``[[stacks]]``) exclude the stack are skipped unrun. Our
   detector script runs each ``bin/detect <platform> <plan>`` in order, with the ``CNB_*``
   variables of its buildpack API (:mod:`.contract`), until one passes (exit 0); a pass whose
   build plan is not satisfied is a skip, and detection goes on with the rest.
3. *Buildpack API*: the chosen buildpack's ``api`` is judged (not in the descriptor or not
   implemented by :mod:`.contract`: exit 12; deprecated: by ``CNB_BUILDPACK_DEPRECATION_MODE``).
   A requested buildpack is judged before detection.
4. *Build*, in ``lb-staging-<droplet>-build``: ``bin/build /layers/<id> /platform <plan>`` with
   the Buildpack Plan from detection; then ``/workspace`` and ``/layers`` are copied out and the
   layers' ``<layer>.toml``, ``launch.toml`` and ``build.toml`` read. A ``Procfile`` in the app
   adds process types and wins over the buildpack's.
5. *Export*: a container of the run image (``-export``, never started) gets the built
   ``/workspace`` and the *launch* layers (cache-only, build-only and ignored ones stay out) and
   is committed as ``target`` with the default process as its command (the Procfile's ``web``,
   else the buildpack's ``default``, else ``web``, else the only one), the launch layers'
   environment, ``PORT=8080``, port 8080 exposed, user ``lb``, and labels for the process
   types, stack, build metadata and lifecycle (and ``launch.toml``'s ``[[labels]]``). When
   ``target`` names a registry it is pushed, and the image to run is then pinned by digest.

The containers carry ``io.lastbackend.staging=<droplet>`` (detect and build) and deterministic
names (all three), and are removed when staging ends, however it ends; :func:`cleanup` removes
what a crashed run left, so a restarted controller calls it before staging a droplet again. The
export container carries no label of ours on purpose: ``docker commit`` copies a container's
labels into the image, and every container started from the droplet would inherit them.

The detector and builder are small POSIX sh scripts (:data:`DETECTOR`, :data:`BUILDER`) copied
into the build containers, so a stack needs nothing but ``/bin/sh``; each buildpack's API
variables are a sh fragment beside them (``/cnb/lifecycle/env/<dir>.<phase>``). The detector
records its decision in :data:`DETECT_RESULT` (``pass <dir>``, ``error <dir> <code>`` or
``none``) and each plan in ``/tmp/lb-plan-<dir>.toml``.

**Docker lifecycle** (:func:`stage_docker`): pull the package's image with its credentials
(always, so wrong credentials fail even when the image is already local), inspect it, and make
``start_command`` from its entrypoint and command. The image to run is the pulled one pinned by
digest (``repo@sha256:...``: the node never pulls a moving tag again, and needs no credentials
when the image is already there); with ``use_caching`` and a platform registry it is copied there
first and the copy is what runs (``cached: true``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import posixpath
import re
import shlex
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import attrs

from lastbackend.lifecycle import contract, stacks
from lastbackend.lifecycle import descriptor as lifecycle
from lastbackend.lifecycle.buildpacks import Buildpack, find
from lastbackend.lifecycle.contract import Target
from lastbackend.lifecycle.descriptor import Descriptor, Kind
from lastbackend.model.registries import DOCKER_HUB, registry_host
from lastbackend.runtime.base import (
    CA_VARIABLES,
    ContainerRuntimeError,
    ContainerSpec,
    ImageConfig,
    ImageError,
    RegistryAuth,
    Runtime,
    split_image,
)

Log = Callable[[str], None]

STAGING_LABEL = "io.lastbackend.staging"
"""On detect and build containers: the droplet they stage (:func:`cleanup` selects by it)."""
LABEL_PROCESS_TYPES = "io.lastbackend.process-types"
LABEL_DROPLET = "io.lastbackend.droplet"
LABEL_APP = "io.lastbackend.app"
LABEL_BUILD_METADATA = "io.buildpacks.build.metadata"
PHASES = ("detect", "build", "export")

PORT = 8080
"""Where a buildpack app listens: ``$PORT``, 8080 unless the platform sets it (as on CF)."""
PORTS = (f"{PORT}/TCP",)
DROPLETS_REPOSITORY = "lastbackend-droplets"
"""Where droplet images are tagged when no platform registry is configured (never pushed)."""

EXIT_DETECT_NONE = 20
EXIT_DETECT_ERROR = 21
EXIT_BUILD = 51
EXIT_EXPORT = 62
"""Upstream lifecycle's codes: no buildpack passed, a detect error, a build error, an export
error (its ranges: detect 2x, build 5x, export 6x)."""

LIFECYCLE_DIR = "/cnb/lifecycle"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
"""Where staging containers get the CA bundle (Debian's path; the busybox stack has none)."""
DETECT_RESULT = "/tmp/lb-detect"
TAIL_LINES = 12
TAIL_WIDTH = 300
"""How much of a failed build's output its error quotes (pip's and npm's last lines say why)."""
_URL_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")
_PROCESS_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

DETECTOR = """\
#!/bin/sh
# lastbackend's detector: bin/detect of each buildpack given (directories under
# /cnb/buildpacks), in order, until one passes or errs. Exit 0 passes, 100 fails, others are
# errors. Each runs in a subshell with its API's CNB_* variables (/cnb/lifecycle/env/<bp>.detect).
# The result file ends with the decision; before it, "skip <bp> <its last line of output>" for
# each that failed, which the engine quotes when nothing passes.
result=%(result)s
out=/tmp/lb-detect-output
: > "$result"
cd /workspace || exit 1
for bp in "$@"; do
  dir=/cnb/buildpacks/$bp
  plan=/tmp/lb-plan-$bp.toml
  : > "$plan"
  (. "%(lifecycle)s/env/$bp.detect" && exec "$dir/bin/detect" /platform "$plan") > "$out" 2>&1
  code=$?
  cat "$out"
  case $code in
    0) echo "       $bp: pass"; echo "pass $bp" >> "$result"; exit 0 ;;
    100)
      echo "       $bp: skip"
      echo "skip $bp $(grep '[^[:space:]]' "$out" | tail -n 1 | cut -c 1-%(said)d)" >> "$result"
      ;;
    *)
      echo "       $bp: error (bin/detect exited $code)"
      echo "error $bp $code" >> "$result"
      exit 1
      ;;
  esac
done
echo none >> "$result"
exit 100
""" % {"result": DETECT_RESULT, "lifecycle": LIFECYCLE_DIR, "said": 300}  # noqa: UP031 (braces)

BUILDER = """\
#!/bin/sh
# lastbackend's builder: bin/build of one buildpack, with its layers directory, the Buildpack
# Plan the engine wrote and its API's CNB_* variables (/cnb/lifecycle/env/<bp>.build).
set -e
bp=$1
dir=/cnb/buildpacks/$bp
layers=/layers/$bp
mkdir -p "$layers"
cd /workspace
. "%(lifecycle)s/env/$bp.build"
exec "$dir/bin/build" "$layers" /platform "/tmp/lb-bp-plan-$bp.toml"
""" % {"lifecycle": LIFECYCLE_DIR}  # noqa: UP031


class StagingError(Exception):
    """Staging failed for a reason the user can act on; ``str()`` is the message to show.

    ``exit_code`` is the lifecycle's (11 platform API, 12 buildpack API, 20 nothing detected,
    21 detect error, 51 build error, 62 export error), ``None`` for failures outside it
    (pulls, pushes, a missing stack, a bad archive).
    """

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@attrs.frozen
class BuildpackResult:
    image: str
    """What to run: ``repo@sha256:...`` when pushed, else the local tag ``target``."""
    image_id: str
    target: str
    """The tag the droplet image was given."""
    digest: str | None
    """The pushed manifest's digest (``sha256:...``), ``None`` when not pushed."""
    buildpack: str
    buildpack_version: str
    stack: str
    process_types: Mapping[str, str]
    start_command: str
    """The command the image runs (the ``web`` process, or the only one)."""
    ports: tuple[str, ...] = PORTS
    cache: bytes | None = None
    """The buildpack's ``cache = true`` layers (a tar of ``layers/<id>/...``) to restore at the
    app's next staging; ``None`` when it made none."""


@attrs.frozen
class DockerResult:
    image: str
    """What to run: the cached copy or the package's image, pinned by digest when it has one."""
    image_path: str
    """Seed 000's ``image_path``: the package's image, or the cached copy's tag."""
    start_command: str
    cached: bool
    ports: tuple[str, ...]
    """What the image exposes, as ``"8080/TCP"``."""
    digest: str | None = None


def droplet_image(registry: str, app: str, droplet: str) -> str:
    """The tag of a droplet's image: in the platform registry when one is configured."""
    if registry:
        return f"{registry.rstrip('/')}/droplets/{app}:{droplet}"
    return f"{DROPLETS_REPOSITORY}/{app}:{droplet}"


def container_name(droplet: str, phase: str) -> str:
    return f"lb-staging-{droplet}-{phase}"


async def cleanup(runtime: Runtime, droplet: str) -> None:
    """Remove every container staging ``droplet`` made (idempotent; nothing if none)."""
    names = {container_name(droplet, phase) for phase in PHASES}
    names |= {state.id for state in await runtime.list({STAGING_LABEL: droplet})}
    await asyncio.gather(*(runtime.remove(name) for name in sorted(names)))


def _discard(line: str) -> None:
    pass


def _redact_urls(text: str) -> str:
    """``scheme://user:password@host`` as ``scheme://***@host`` (a proxy's, an index's)."""
    return _URL_USERINFO.sub(r"\1***@", text)


# -- the buildpack lifecycle -------------------------------------------------------------------


async def stage_buildpack(
    runtime: Runtime,
    app_tar: bytes,
    *,
    droplet: str,
    app: str,
    buildpacks: Sequence[Buildpack],
    requested: str | None = None,
    stack: str = stacks.DEFAULT_STACK,
    env: Mapping[str, str] | None = None,
    descriptor: Descriptor,
    platform_api: str = "",
    environ: Mapping[str, str] | None = None,
    target: str,
    push_auth: RegistryAuth | None = None,
    log: Log = _discard,
    timeout_s: float | None = None,
    labels: Mapping[str, str] | None = None,
    image_labels: Mapping[str, str] | None = None,
    ca_bundle: bytes | None = None,
    build_env: Mapping[str, str] | None = None,
    cache: bytes | None = None,
) -> BuildpackResult:
    """Stage ``app_tar`` (a tar, optionally compressed, or a zip of the app) into ``target``.

    ``buildpacks`` are the candidates in detection order (:func:`.buildpacks.discover`);
    ``requested`` names the one to use instead of detecting. ``env`` is the droplet's
    environment, given to detect and build (not baked into the image). ``platform_api`` is the
    configured one (``""``: the newest the descriptor supports) and ``environ`` holds the
    deprecation mode variables. ``target`` is :func:`droplet_image`'s; it is pushed (with
    ``push_auth``) when it names a registry. ``labels`` are added to the staging containers,
    ``image_labels`` to the droplet image (the installation id:
    :mod:`lastbackend.store.installation`); only those, since every container run from the image
    inherits its labels.
    ``ca_bundle`` (PEM) replaces the stack's CA bundle in the detect and build containers, with
    the variables that point pip, requests and node at it; ``build_env`` (the host's proxy
    variables) is in their environment, under the droplet's own. ``cache`` is the previous
    staging's :attr:`BuildpackResult.cache`: its layers are restored before ``bin/build`` runs.
    Containers are removed at the end, whatever happens; see the module docstring for the steps.
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await _Buildpack(
                runtime=runtime,
                droplet=droplet,
                app=app,
                stack=stack,
                env=dict(env or {}),
                descriptor=descriptor,
                environ=dict(environ or {}),
                log=log,
                labels={**(labels or {}), STAGING_LABEL: droplet},
                image_labels=dict(image_labels or {}),
                ca_bundle=ca_bundle,
                build_env=dict(build_env or {}),
                cache=cache,
            ).stage(app_tar, buildpacks, requested, platform_api, target, push_auth)
    except TimeoutError:
        if timeout_s is None:
            raise  # a caller's own deadline: theirs to report
        raise StagingError(f"staging did not finish within {timeout_s:g}s") from None
    except ContainerRuntimeError as exc:
        raise StagingError(f"the container engine failed: {exc}") from None
    finally:
        with contextlib.suppress(ContainerRuntimeError):
            await asyncio.shield(cleanup(runtime, droplet))


@attrs.define
class _Buildpack:
    runtime: Runtime
    droplet: str
    app: str
    stack: str
    env: dict[str, str]
    descriptor: Descriptor
    environ: dict[str, str]
    log: Log
    labels: dict[str, str]
    image_labels: dict[str, str] = attrs.Factory(dict)
    ca_bundle: bytes | None = None
    build_env: dict[str, str] = attrs.Factory(dict)
    cache: bytes | None = None
    platform: str = ""
    target: Target = attrs.Factory(Target)

    async def stage(
        self,
        app_tar: bytes,
        buildpacks: Sequence[Buildpack],
        requested: str | None,
        platform_api: str,
        target: str,
        push_auth: RegistryAuth | None,
    ) -> BuildpackResult:
        self.platform = lifecycle.platform_api(self.descriptor, platform_api)
        self.check("platform", self.platform, "")
        build_ref, run_ref = stacks.build_image(self.stack), stacks.run_image(self.stack)
        run_info = None
        for ref in (build_ref, run_ref):
            run_info = await self.runtime.inspect_image(ref)
            if run_info is None:
                raise StagingError(
                    f"stack {self.stack} is not available: its image {ref} is missing "
                    f"(build it with `lastbackend stack build --name {self.stack}`)"
                )
        assert run_info is not None
        self.target = stacks.target(run_info)
        workspace = workspace_members(app_tar)
        candidates = candidates_for(buildpacks, requested)
        if requested is not None:
            self.check("buildpack", candidates[0].api, f"buildpack {candidates[0].id}: ")
        await cleanup(self.runtime, self.droplet)  # what an interrupted run left

        chosen, entries = await self.detect(build_ref, workspace, candidates)
        if requested is None:
            self.check("buildpack", chosen.api, f"buildpack {chosen.id}: ")
        built, layers_tar = await self.build(build_ref, workspace, chosen, entries)

        layers_dir = f"{stacks.LAYERS}/{chosen.dirname}"
        files = await asyncio.to_thread(_layer_files, layers_tar, chosen.dirname)
        try:
            layers = contract.read_layers(files)
        except ValueError as exc:
            raise StagingError(f"buildpack {chosen.id} wrote a bad {exc}", EXIT_BUILD) from None
        launch = _launch(files, chosen)
        unmet = _unmet(files, chosen, entries)
        for warning in launch.warnings:
            self.log(f"       Warning: buildpack {chosen.id}: {warning}")
        for layer in layers:
            kinds = [k for k in ("launch", "build", "cache") if getattr(layer, k)]
            self.log(f"       layer {layer.name}: {', '.join(kinds) or 'ignored (no types)'}")
        for name in unmet:
            self.log(f"       unmet: {name}")

        processes = {p.type: p for p in launch.processes}
        procfile = _read_member(built, "workspace/Procfile")
        declared = parse_procfile(procfile.decode(errors="replace"), self.log) if procfile else {}
        for kind, line in declared.items():
            processes[kind] = contract.Process(kind, (line,), direct=False)
        start = default_process(processes, set(declared), chosen)
        process_types = {kind: p.line for kind, p in processes.items()}
        self.log(f"-----> Process types: {', '.join(process_types)}")
        for kind, command in process_types.items():
            self.log(f"       {kind}: {command}")

        env, per_process = contract.launch_env(run_info.env, layers_dir, layers, files, processes)
        command = start.shell(per_process.get(start.type))
        self.log(f"-----> Exporting {target}")
        launched = {layer.name for layer in layers if layer.launch}
        config = self.image_config(
            chosen, processes, start, command, env, launch.labels, layers, unmet
        )
        name = container_name(self.droplet, "export")
        await self.runtime.create(ContainerSpec(name=name, image=run_ref))
        await self.runtime.put_archive(name, "/", built)
        exported = await asyncio.to_thread(_layers_tar, layers_tar, chosen, launched, True)
        assert exported is not None  # with launch.toml: never None
        await self.runtime.put_archive(name, "/", exported)
        cache_names = {layer.name for layer in layers if layer.cache}
        image_id, kept = await asyncio.gather(  # the cache's tar is made while Docker commits
            self.runtime.commit(name, target, config),
            asyncio.to_thread(_layers_tar, layers_tar, chosen, cache_names, False),
        )
        image, digest = target, None
        if registry_host(target) != DOCKER_HUB:
            self.log(f"-----> Pushing {target}")
            try:
                digest = await self.runtime.push(target, push_auth)
            except ImageError as exc:
                raise StagingError(
                    _redact(f"pushing the droplet image failed: {exc}", push_auth), EXIT_EXPORT
                ) from None
            image = f"{split_image(target)[0]}@{digest}"
            self.log(f"       {digest}")
        return BuildpackResult(
            image=image,
            image_id=image_id,
            target=target,
            digest=digest,
            buildpack=chosen.id,
            buildpack_version=chosen.version,
            stack=self.stack,
            process_types=process_types,
            start_command=command,
            cache=kept,
        )

    def check(self, kind: Kind, api: str, prefix: str) -> None:
        """The descriptor's verdict on one API, its warnings into the log.

        A buildpack API the descriptor lists but the engine does not implement is refused as
        unsupported (exit 12) too: the descriptor cannot promise a contract nobody runs.
        """
        result = lifecycle.check(
            self.descriptor,
            api if kind == "platform" else None,
            api if kind == "buildpack" else None,
            self.environ,
        )
        if kind == "buildpack" and result.ok and not contract.implemented(api):
            listed = ", ".join(
                str(v)
                for v in self.descriptor.buildpack.expanded_supported()
                if v in contract.IMPLEMENTED
            )
            result = lifecycle.Result(
                lifecycle.EXIT_BUILDPACK_API,
                result.warnings,
                f"buildpack API {api} is not supported by lifecycle {self.descriptor.version} "
                f"(supported: {listed or 'none'})",
            )
        for warning in result.warnings:
            self.log(f"       Warning: {prefix}{warning}")
        if not result.ok:
            raise StagingError(
                f"{prefix}{result.error} (exit {result.exit_code})", result.exit_code
            )

    def phase_env(self) -> dict[str, str]:
        """The container's: the host's proxy variables, the CA bundle's, the user's variables
        and the platform's (not the buildpack API's)."""
        ca = {name: CA_BUNDLE for name in CA_VARIABLES} if self.ca_bundle is not None else {}
        return {
            **self.build_env,
            **ca,
            **self.env,
            "CNB_PLATFORM_API": self.platform,
            "CNB_STACK_ID": self.stack,
        }

    def env_files(self, buildpacks: Iterable[Buildpack], phase: str) -> dict[str, str]:
        """``<platform>/env/<name>`` for each user variable, and per buildpack the sh fragment
        with its API's variables for ``phase`` (unsetting the user's for a clear-env one)."""
        files = {
            f"{stacks.PLATFORM}/env/{key}": value
            for key, value in self.env.items()
            if _ENV_NAME.fullmatch(key)
        }
        if self.ca_bundle is not None:
            files[CA_BUNDLE] = self.ca_bundle.decode(errors="replace")
        for bp in buildpacks:
            plan = f"/tmp/lb-plan-{bp.dirname}.toml"
            if phase == "build":
                plan = f"/tmp/lb-bp-plan-{bp.dirname}.toml"
            exports = contract.phase_env(
                bp.api,
                phase,
                buildpack_dir=f"/cnb/buildpacks/{bp.dirname}",
                platform_dir=stacks.PLATFORM,
                plan_path=plan,
                layers_dir=f"{stacks.LAYERS}/{bp.dirname}",
                target=self.target,
            )
            unset = self.env if bp.clear_env else {}
            files[f"{LIFECYCLE_DIR}/env/{bp.dirname}.{phase}"] = contract.env_script(exports, unset)
        return files

    async def run_phase(
        self,
        phase: str,
        image: str,
        command: str,
        inputs: bytes,
        restore: bytes | None = None,
        tail: collections.deque[str] | None = None,
    ) -> tuple[str, int]:
        """Create the phase's container, copy ``inputs`` in, run it with its output logged (and
        its last non-blank lines kept in ``tail``, for the error when it fails)."""
        spec = ContainerSpec(
            name=container_name(self.droplet, phase),
            image=image,
            command=command,
            env=self.phase_env(),
            labels=self.labels,
        )
        await self.runtime.remove(spec.name)  # a detection that ran again
        await self.runtime.create(spec)
        await self.runtime.put_archive(spec.name, "/", inputs)
        if restore is not None:
            await self.runtime.put_archive(spec.name, "/", restore)
        await self.runtime.start(spec.name)
        log = self.log
        if tail is not None:
            keep = tail

            def log(line: str) -> None:
                self.log(line)
                if line.strip():
                    keep.append(line.strip())

        await _follow(self.runtime, spec.name, log)
        return spec.name, await self.runtime.wait(spec.name)

    async def detect(
        self, image: str, workspace: list[Member], candidates: Sequence[Buildpack]
    ) -> tuple[Buildpack, list[contract.Entry]]:
        """The first candidate that passes with a satisfied build plan, and its plan entries.

        Candidates whose targets (or stacks) exclude this stack are not run. The detector stops
        at the first pass; one whose plan is not satisfied is skipped and the rest detect again.
        """
        self.log(f"-----> Detecting (platform API {self.platform}, stack {self.stack})")
        reasons: dict[str, str] = {}  # buildpack id -> why it did not detect, when known
        runnable = []
        for bp in candidates:
            why = contract.incompatibility(bp.targets, bp.stacks, self.target, self.stack)
            if why is None:
                runnable.append(bp)
            else:
                self.log(f"       {bp.dirname}: skip ({why})")
                reasons[bp.id] = why
        while runnable:
            by_dir = {b.dirname: b for b in runnable}
            command = shlex.join([f"{LIFECYCLE_DIR}/detector", *by_dir])
            inputs = _inputs(workspace, runnable, self.env_files(runnable, "detect"))
            name, code = await self.run_phase("detect", image, command, inputs)
            decision = await self.runtime.get_archive(name, DETECT_RESULT)
            result = (_read_member(decision or b"", None) or b"").decode(errors="replace")
            *said, last = result.splitlines() or [""]
            for line in said:
                kind, _, rest = line.partition(" ")
                bp_dir, _, text = rest.partition(" ")
                if kind == "skip" and bp_dir in by_dir and text.strip():
                    reasons[by_dir[bp_dir].id] = _own_words(text, bp_dir)
            words = last.split()
            if words[:1] == ["pass"] and len(words) == 2 and words[1] in by_dir:
                chosen = by_dir[words[1]]
                plan_path = f"/tmp/lb-plan-{chosen.dirname}.toml"
                plan_tar = await self.runtime.get_archive(name, plan_path)
                plan = (_read_member(plan_tar or b"", None) or b"").decode(errors="replace")
                entries, why = contract.resolve_plan(plan)
                if why is None:
                    return chosen, entries
                self.log(f"       {chosen.dirname}: skip ({why})")
                reasons[chosen.id] = why
                runnable = runnable[runnable.index(chosen) + 1 :]
                continue
            if words[:1] == ["error"] and len(words) == 3 and words[1] in by_dir:
                raise StagingError(
                    f"buildpack {by_dir[words[1]].id} failed to detect: its bin/detect exited "
                    f"{words[2]} (0 passes, 100 fails, anything else is an error)",
                    EXIT_DETECT_ERROR,
                )
            if words != ["none"]:
                raise StagingError(
                    f"detection failed: the detector exited {code}", EXIT_DETECT_ERROR
                )
            break
        raise StagingError(nothing_detected(candidates, reasons), EXIT_DETECT_NONE)

    async def build(
        self,
        image: str,
        workspace: list[Member],
        chosen: Buildpack,
        entries: Sequence[contract.Entry],
    ) -> tuple[bytes, bytes]:
        """Run the build; the built ``/workspace`` and ``/layers`` as tars."""
        self.log(f"-----> Building with {chosen.id} {chosen.version} (buildpack API {chosen.api})")
        command = shlex.join([f"{LIFECYCLE_DIR}/builder", chosen.dirname])
        files = self.env_files([chosen], "build")
        files[f"/tmp/lb-bp-plan-{chosen.dirname}.toml"] = contract.plan_toml(entries)
        inputs = _inputs(workspace, [chosen], files)
        restore = None
        if self.cache is not None:
            cached = await asyncio.to_thread(read_layer_names, self.cache, chosen.dirname)
            if cached:
                restore = await asyncio.to_thread(
                    _layers_tar, self.cache, chosen, set(cached), False
                )
                self.log(f"-----> Restoring cached layers: {', '.join(cached)}")
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        name, code = await self.run_phase("build", image, command, inputs, restore, tail)
        if code != 0:
            said = "\n".join(f"       {_redact_urls(line)[:TAIL_WIDTH]}" for line in tail)
            raise StagingError(
                f"buildpack {chosen.id} failed to build: its bin/build exited {code}"
                + (f"; its last lines of output:\n{said}" if said else ""),
                EXIT_BUILD,
            )
        built = await self.runtime.get_archive(name, stacks.WORKSPACE)
        layers = await self.runtime.get_archive(name, stacks.LAYERS)
        if built is None or layers is None:
            raise StagingError("the build left no /workspace or /layers to export", EXIT_EXPORT)
        return built, layers

    def image_config(
        self,
        chosen: Buildpack,
        processes: Mapping[str, contract.Process],
        start: contract.Process,
        command: str,
        env: Mapping[str, str],
        launch_labels: Mapping[str, str],
        layers: Sequence[contract.Layer],
        unmet: Sequence[str],
    ) -> ImageConfig:
        labels = lifecycle.labels(self.descriptor)
        metadata = {
            "processes": [
                {"type": kind, "command": p.line, "default": p is start}
                for kind, p in processes.items()
            ],
            "buildpacks": [{"id": chosen.id, "version": chosen.version, "api": chosen.api}],
            "layers": [
                {"name": layer.name, "launch": layer.launch, "cache": layer.cache}
                for layer in layers
                if not layer.ignored
            ],
            "unmet": list(unmet),
            "stack": self.stack,
            "target": attrs.asdict(self.target),
            "platform_api": self.platform,
        }
        return ImageConfig(
            cmd=("/bin/sh", "-c", command),
            env={**env, "PORT": str(PORT)},
            labels={
                **launch_labels,
                **self.image_labels,
                LABEL_PROCESS_TYPES: _json({kind: p.line for kind, p in processes.items()}),
                LABEL_DROPLET: self.droplet,
                LABEL_APP: self.app,
                stacks.LABEL_STACK: self.stack,
                LABEL_BUILD_METADATA: _json(metadata),
                lifecycle.LABEL_VERSION: labels[lifecycle.LABEL_VERSION],
                lifecycle.LABEL_APIS: labels[lifecycle.LABEL_APIS],
            },
            exposed_ports=PORTS,
            workdir=stacks.WORKSPACE,
            user=stacks.USER,
        )


_HINT = "Add a Procfile with a line like 'web: <command>', or an index.html for a static site."


def nothing_detected(candidates: Sequence[Buildpack], reasons: Mapping[str, str]) -> str:
    """The error when no candidate detected the app: what each looked for (its ``[metadata]
    detects``) and, when known, why it did not pass (its last line of output, or why it could
    not run here), so the user knows what to add to the app or which stack to use."""
    tried = ", ".join(b.id for b in candidates)
    looked = []
    for bp in candidates:
        why = f" ({reasons[bp.id]})" if bp.id in reasons else ""
        looked.append(f"{bp.id}: {bp.looks_for}{why}")
    hint = "" if len(candidates) == 1 else f" {_HINT}"
    return (
        f"no buildpack detected the app (tried: {tried}). "
        f"What each looked for: {'; '.join(looked)}.{hint}"
    )


def _own_words(text: str, bp_dir: str) -> str:
    """A buildpack's last line of detect output, without indentation or its own name first."""
    text = text.strip()
    return text.removeprefix(f"{bp_dir}:").strip() or text


def candidates_for(buildpacks: Sequence[Buildpack], requested: str | None) -> list[Buildpack]:
    """Those to detect with: the requested one alone, or all in order."""
    if requested is None:
        if not buildpacks:
            raise StagingError("no buildpacks are installed", EXIT_DETECT_NONE)
        return list(buildpacks)
    found = find(buildpacks, requested)
    if found is None:
        available = ", ".join(b.id for b in buildpacks) or "none"
        raise StagingError(f"unknown buildpack {requested!r} (available: {available})")
    return [found]


def default_process(
    processes: Mapping[str, contract.Process], from_procfile: set[str], chosen: Buildpack
) -> contract.Process:
    """What the image runs: the Procfile's ``web``, else the buildpack's default process, else
    ``web``, else the only one; nothing to start is a build failure."""
    if "web" in from_procfile:
        return processes["web"]
    defaults = [p for p in processes.values() if p.default and p.type not in from_procfile]
    if defaults:
        return defaults[0]
    if "web" in processes:
        return processes["web"]
    if len(processes) == 1:
        return next(iter(processes.values()))
    if not processes:
        raise StagingError(
            f"nothing to start: buildpack {chosen.id} declared no process types and the app has "
            "no Procfile (add one with a line like 'web: <command>')",
            EXIT_BUILD,
        )
    raise StagingError(
        f"no web process among {', '.join(processes)}: add 'web: <command>' to the Procfile",
        EXIT_BUILD,
    )


def parse_procfile(text: str, log: Log = _discard) -> dict[str, str]:
    """``<type>: <command>`` lines; blank lines and ``#`` comments skipped, others logged."""
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind, colon, command = line.partition(":")
        kind, command = kind.strip(), command.strip()
        if not colon or not command or not _PROCESS_TYPE.fullmatch(kind):
            log(f"       Procfile line {number} is not '<type>: <command>', skipped: {line}")
            continue
        found[kind] = command
    return found


def parse_launch(text: str, api: str) -> dict[str, str]:
    """``launch.toml``'s processes as shell lines, by buildpack API ``api`` (see
    :func:`.contract.parse_launch`); :class:`ValueError` names what is wrong."""
    return {p.type: p.line for p in contract.parse_launch(text, api).processes}


def _launch(files: Mapping[str, bytes], chosen: Buildpack) -> contract.Launch:
    text = files.get("launch.toml")
    if text is None:
        return contract.Launch()
    try:
        return contract.parse_launch(text.decode(errors="replace"), chosen.api)
    except ValueError as exc:
        raise StagingError(
            f"buildpack {chosen.id} wrote a bad launch.toml: {exc}", EXIT_BUILD
        ) from None


def _unmet(
    files: Mapping[str, bytes], chosen: Buildpack, entries: Sequence[contract.Entry]
) -> list[str]:
    text = files.get("build.toml")
    if text is None:
        return []
    try:
        return contract.parse_build(text.decode(errors="replace"), entries)
    except ValueError as exc:
        raise StagingError(
            f"buildpack {chosen.id} wrote a bad build.toml: {exc}", EXIT_BUILD
        ) from None


def _layer_files(layers_tar: bytes, dirname: str) -> dict[str, bytes]:
    """What the engine reads of a buildpack's layers dir, by path under it.

    The ``*.toml`` files at its top, the files of each layer's ``env*`` directories, and an
    empty entry for each layer's ``bin`` and ``lib`` directory; never the layers' other content,
    which may be large.
    """
    prefix = f"layers/{dirname}/"
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(layers_tar), mode="r:*") as tar:
        for info in tar:
            name = info.name.removeprefix("./")
            if not name.startswith(prefix):
                continue
            path = name[len(prefix) :]
            parts = path.split("/")
            if len(parts) == 2 and parts[1] in ("bin", "lib") and info.isdir():
                found[path] = b""
            wanted = (len(parts) == 1 and path.endswith(".toml")) or (
                len(parts) >= 3 and parts[1].startswith("env")
            )
            if wanted and info.isfile():
                extracted = tar.extractfile(info)
                found[path] = extracted.read() if extracted else b""
    return found


def _layers_tar(
    layers_tar: bytes, chosen: Buildpack, names: set[str], with_launch: bool
) -> bytes | None:
    """Layers ``names`` of the buildpack (dirs and ``.toml``) out of a ``/layers`` tar, and
    ``launch.toml`` when ``with_launch``: the droplet image's launch layers, or the cache layers
    to keep. ``None`` when that is nothing but the directories."""
    prefix = f"layers/{chosen.dirname}"
    buf = io.BytesIO()
    kept = 0
    with (
        tarfile.open(fileobj=io.BytesIO(layers_tar), mode="r:*") as source,
        tarfile.open(fileobj=buf, mode="w") as out,
    ):
        for info in source:
            name = info.name.removeprefix("./")
            if name in ("layers", prefix):
                keep = True
            elif name.startswith(prefix + "/"):
                top = name[len(prefix) + 1 :].split("/", 1)[0]
                keep = (with_launch and top == "launch.toml") or top.removesuffix(".toml") in names
                kept += keep
            else:
                keep = False
            if keep:
                out.addfile(info, source.extractfile(info) if info.isfile() else None)
    return buf.getvalue() if kept or with_launch else None


def read_layer_names(layers_tar: bytes, dirname: str) -> list[str]:
    """The layers with a ``<layer>.toml`` in a ``layers/<dirname>/`` tar, by name."""
    try:
        return [layer.name for layer in contract.read_layers(_layer_files(layers_tar, dirname))]
    except (ValueError, tarfile.TarError):
        return []


LINE_MAX = 64 * 1024
"""Output without a newline is logged in pieces about this long, so no buffer grows unbounded."""


async def _follow(runtime: Runtime, name: str, log: Log) -> None:
    """The container's output into ``log``, line by line, until it exits."""
    pending = b""
    async with contextlib.aclosing(runtime.logs(name, follow=True)) as chunks:
        async for chunk in chunks:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) >= LINE_MAX:  # output without newlines: passed on in pieces
                lines.append(pending)
                pending = b""
            for line in lines:
                log(line.decode(errors="replace").rstrip("\r"))
    if pending:
        log(pending.decode(errors="replace").rstrip("\r"))


# -- archives ----------------------------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes | None]
"""An entry to write: its header and, for a regular file, its content."""


def workspace_members(archive: bytes) -> list[Member]:
    """The app as entries under ``workspace/``, owned by the stack's user.

    Accepts a tar (plain or compressed) or a zip. Entries that would leave the app directory
    are refused; devices and fifos are dropped; missing parent directories are added, so
    every directory is the user's to write in.
    """
    members: dict[str, Member] = {}
    for name, info, data in _entries(archive):
        path = _inside(name)
        if path is None:
            continue  # the root itself
        info.name = f"workspace/{path}"
        if info.islnk():
            target = _inside(info.linkname)
            if target is None:
                raise StagingError(f"the app archive has a hard link out of the app: {name}")
            info.linkname = f"workspace/{target}"
        info.uid = info.gid = stacks.UID
        info.uname = info.gname = ""
        info.mode = (info.mode & 0o7777) | (0o700 if info.isdir() else 0o600)
        members[info.name] = (info, data)
    directories = {"workspace"}
    for name in members:
        parent = posixpath.dirname(name)
        while parent not in directories:
            directories.add(parent)
            parent = posixpath.dirname(parent)
    for directory in sorted(directories - set(members)):
        info = tarfile.TarInfo(directory)
        info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, stacks.UID, stacks.UID
        members[directory] = (info, None)
    return sorted(members.values(), key=lambda m: m[0].name)


def top_level_names(archive: bytes) -> set[str]:
    """The names at the app's root (files and directories), for choosing a stack."""
    names = set()
    for name, _, _ in _entries(archive):
        path = _inside(name)
        if path is not None:
            names.add(path.split("/", 1)[0])
    return names


def _entries(archive: bytes) -> Iterator[tuple[str, tarfile.TarInfo, bytes | None]]:
    if archive[:4] == b"PK\x03\x04" or archive[:4] == b"PK\x05\x06":
        try:
            with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
                for entry in zipped.infolist():
                    info = tarfile.TarInfo(entry.filename)
                    mode = entry.external_attr >> 16
                    if entry.is_dir():
                        info.type, info.mode = tarfile.DIRTYPE, mode & 0o7777 or 0o755
                        yield entry.filename, info, None
                    else:
                        data = zipped.read(entry)
                        info.size, info.mode = len(data), mode & 0o7777 or 0o644
                        yield entry.filename, info, data
        except (zipfile.BadZipFile, OSError) as exc:
            raise StagingError(f"the app archive is not a readable zip: {exc}") from None
        return
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            for info in tar:
                if info.isfile():
                    extracted = tar.extractfile(info)
                    yield info.name, info, extracted.read() if extracted else b""
                elif info.isdir() or info.issym() or info.islnk():
                    yield info.name, info, None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise StagingError(f"the app archive is not a readable tar or zip: {exc}") from None


def _inside(name: str) -> str | None:
    """``name`` relative to the app root, ``None`` for the root; an escape is refused."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StagingError(f"the app archive has an entry outside the app directory: {name}")
    return "/".join(parts) or None


def _inputs(
    workspace: Iterable[Member], buildpacks: Iterable[Buildpack], files: Mapping[str, str]
) -> bytes:
    """One tar for ``/``: the app, the buildpacks, the lifecycle scripts and ``files`` (paths
    to texts: the per-buildpack env fragments, the Buildpack Plan)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in workspace:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        for name, script in (("detector", DETECTOR), ("builder", BUILDER)):
            _add(tar, f"{LIFECYCLE_DIR.lstrip('/')}/{name}", script.encode(), 0o755)
        for buildpack in buildpacks:
            _add_tree(tar, buildpack.path, f"cnb/buildpacks/{buildpack.dirname}")
        for path, text in files.items():
            _add(tar, path.lstrip("/"), text.encode(), 0o644)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def _add_tree(tar: tarfile.TarFile, root: Path, prefix: str) -> None:
    """A buildpack directory, readable by everyone, its ``bin/`` executable, owned by root."""
    info = tarfile.TarInfo(prefix)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(info)
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        name = f"{prefix}/{relative}"
        if path.is_symlink():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, str(path.readlink())
            tar.addfile(info)
        elif path.is_dir():
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        elif path.is_file():
            executable = relative.startswith("bin/") or path.stat().st_mode & 0o111
            _add(tar, name, path.read_bytes(), 0o755 if executable else 0o644)


def _read_member(archive: bytes, name: str | None) -> bytes | None:
    """A regular file of a tar by name (``None``: the first one), or ``None``."""
    if not archive:
        return None
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
        for info in tar:
            if info.isfile() and (name is None or info.name.removeprefix("./") == name):
                extracted = tar.extractfile(info)
                return extracted.read() if extracted else b""
    return None


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _redact(message: str, *auths: RegistryAuth | None) -> str:
    for auth in auths:
        if auth is not None and auth.password:
            message = message.replace(auth.password, "***")
    return message


# -- the docker lifecycle ----------------------------------------------------------------------


async def stage_docker(
    runtime: Runtime,
    image: str,
    *,
    auth: RegistryAuth | None = None,
    use_caching: bool = False,
    cache_target: str | None = None,
    push_auth: RegistryAuth | None = None,
    log: Log = _discard,
) -> DockerResult:
    """Stage a docker package: pull ``image`` with ``auth``, inspect it, maybe cache it.

    ``auth.server`` may be empty (the image's registry is used). With ``use_caching`` the image
    is tagged ``cache_target`` (:func:`droplet_image` in the platform registry) and pushed with
    ``push_auth``; without a ``cache_target`` there is nowhere to cache, which is logged and
    staging goes on uncached.
    """
    if auth is not None and not auth.server:
        auth = RegistryAuth(auth.username, auth.password, registry_host(image))
    try:
        return await _stage_docker(runtime, image, auth, use_caching, cache_target, push_auth, log)
    except ContainerRuntimeError as exc:
        message = _redact(f"the container engine failed: {exc}", auth, push_auth)
        raise StagingError(message) from None


async def _stage_docker(
    runtime: Runtime,
    image: str,
    auth: RegistryAuth | None,
    use_caching: bool,
    cache_target: str | None,
    push_auth: RegistryAuth | None,
    log: Log,
) -> DockerResult:
    log(f"-----> Pulling {image}" + (f" as {auth.username}" if auth else ""))
    try:
        await runtime.ensure_image(image, auth, always_pull=True)
    except ImageError as exc:
        raise StagingError(_pull_failure(image, str(exc), auth)) from None
    info = await runtime.inspect_image(image)
    if info is None:
        raise StagingError(f"{image} was pulled but is not on the engine any more; stage again")
    argv = [*info.entrypoint, *info.cmd]
    if not argv:
        raise StagingError(f"{image} has neither ENTRYPOINT nor CMD: there is nothing to start")
    start = shlex.join(argv)
    pinned = info.digest_for(image)
    log(f"       {pinned or info.id}")
    log(f"       start command: {start}")
    log(f"       exposed ports: {', '.join(info.exposed_ports) or '(none)'}")
    if use_caching and not cache_target:
        log("       use_caching: no platform registry is configured, so the image is not cached")
    if not (use_caching and cache_target):
        return DockerResult(
            image=pinned or image,
            image_path=image,
            start_command=start,
            cached=False,
            ports=info.exposed_ports,
            digest=pinned.partition("@")[2] if pinned else None,
        )
    log(f"-----> Caching {image} as {cache_target}")
    await runtime.tag(image, cache_target)
    try:
        digest = await runtime.push(cache_target, push_auth)
    except ImageError as exc:
        message = f"caching {image} in the platform registry failed: {exc}"
        raise StagingError(_redact(message, auth, push_auth)) from None
    log(f"       {digest}")
    return DockerResult(
        image=f"{split_image(cache_target)[0]}@{digest}",
        image_path=cache_target,
        start_command=start,
        cached=True,
        ports=info.exposed_ports,
        digest=digest,
    )


_REFUSED = ("unauthorized", "authentication required", "no basic auth credentials", "denied")
_MISSING = ("manifest unknown", "not found", "does not exist")


def _pull_failure(image: str, detail: str, auth: RegistryAuth | None) -> str:
    """A user's reading of a pull error: refused credentials, no such image, or the error."""
    host = registry_host(image)
    lowered = detail.lower()
    if any(word in lowered for word in _REFUSED):
        who = f"the credentials of {auth.username}" if auth else "no credentials"
        reason = f"{host} refused {who}: check the package's username and password"
        if auth is None:
            reason = f"{host} requires credentials: give the package a username and password"
        message = f"cannot pull {image}: {reason} ({detail})"
    elif any(word in lowered for word in _MISSING):
        message = f"cannot pull {image}: no such image or tag in {host} ({detail})"
    else:
        message = f"cannot pull {image}: {detail}"
    return _redact(message, auth)
