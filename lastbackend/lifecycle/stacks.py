"""Stacks: named pairs of images, one to build apps in and one to run them on.

A stack ``<name>`` is ``lastbackend/stack-build:<name>`` (where buildpacks detect and build) and
``lastbackend/stack-run:<name>`` (what a droplet image is made from). Both carry
``io.buildpacks.stack.id=<name>``; the build image also carries the lifecycle labels of document
002 (``io.buildpacks.lifecycle.version``, ``io.buildpacks.lifecycle.apis`` and the backwards
compatible ``io.buildpacks.builder.metadata``), which ``lastbackend stack inspect`` prints the
way ``pack builder inspect`` does.

Two stacks are built here with nothing pulled from a registry. ``busybox``: a rootfs of Debian's
busybox-static binary and its applets, imported as an image (``docker import``). ``debian``
(:func:`build_debian`): two minimal roots made by mmdebstrap from this machine's apt sources, a
run image with the interpreters and the CA bundle but no compiler, a build image with pip, npm
and build-essential too, labelled with their distribution (``io.buildpacks.base.distro.*``, what
buildpack API 0.10+ sees as its target). Both have a non-root user ``lb`` (uid 1000) that builds
and runs apps, and the directories of the buildpack contract: ``/workspace`` (the app),
``/layers``, ``/platform``, ``/cnb``, ``/tmp``. Any other stack is a pair of images an admin tags
with these names; the same labels and paths are expected. :func:`default_stack` picks
``debian`` once it is built, unless ``staging.default_stack`` says otherwise.

:func:`ensure_stack` is idempotent and cheap when the images are there (two inspects): call it
before staging. It rebuilds a busybox stack whose lifecycle labels no longer match the
descriptor, so a changed ``lifecycle.toml`` reaches the builder image; debian is built only when
missing (``lastbackend stack build --name debian`` rebuilds it).
"""

from __future__ import annotations

import asyncio
import io
import json
import platform
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from lastbackend.lifecycle import descriptor as lifecycle
from lastbackend.lifecycle.contract import Target
from lastbackend.lifecycle.descriptor import Descriptor
from lastbackend.runtime.base import ImageConfig, ImageInfo, Runtime

DEFAULT_STACK = "busybox"
DEBIAN_STACK = "debian"
BUILT_HERE = (DEFAULT_STACK, DEBIAN_STACK)
"""The stacks lastbackend builds itself; any other is an admin's pair of tagged images."""
BUILD_REPOSITORY = "lastbackend/stack-build"
RUN_REPOSITORY = "lastbackend/stack-run"
LABEL_STACK = "io.buildpacks.stack.id"
LABEL_DISTRO_NAME = "io.buildpacks.base.distro.name"
LABEL_DISTRO_VERSION = "io.buildpacks.base.distro.version"
"""On a run image: its distribution (``/etc/os-release`` ``ID`` and ``VERSION_ID``), the
``CNB_TARGET_DISTRO_*`` that buildpack API 0.10+ sees and ``[[targets.distros]]`` match."""
_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}

USER = "lb"
UID = 1000
"""The stack's non-root user: detect, build and the app itself run as it."""
WORKSPACE = "/workspace"
LAYERS = "/layers"
PLATFORM = "/platform"
PATH = "/bin:/usr/bin"
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN_RUN_PACKAGES = ("python3", "nodejs", "ca-certificates", "busybox")
"""The debian run image: the interpreters and the CA bundle, busybox for static sites' httpd;
no compiler."""
DEBIAN_BUILD_PACKAGES = (
    *DEBIAN_RUN_PACKAGES,
    "python3-venv",
    "python3-pip",
    "npm",
    "build-essential",
)

FALLBACK_APPLETS = (
    "sh", "ash", "awk", "basename", "cat", "chmod", "cp", "cut", "date", "dirname", "echo",
    "env", "expr", "false", "find", "grep", "head", "hostname", "httpd", "id", "kill", "ln",
    "ls", "mkdir", "mktemp", "mv", "nc", "printf", "ps", "pwd", "readlink", "rm", "sed",
    "seq", "sleep", "sort", "tail", "tar", "tee", "test", "touch", "tr", "true", "uname",
    "uniq", "wc", "wget", "which", "xargs",
)  # fmt: skip
"""Applets linked when the binary cannot list its own (a foreign architecture)."""


class StackError(RuntimeError):
    """A stack that cannot be built or used; the message says what to do."""


def build_image(name: str) -> str:
    return f"{BUILD_REPOSITORY}:{name}"


def run_image(name: str) -> str:
    return f"{RUN_REPOSITORY}:{name}"


def host_arch() -> str:
    """This machine's architecture in OCI terms: ``docker import`` gives a stack the host's."""
    machine = platform.machine().lower()
    return _ARCHES.get(machine, machine)


def target(run: ImageInfo) -> Target:
    """The target a stack's run image offers: linux, the host's architecture, its distro labels."""
    return Target(
        os="linux",
        arch=host_arch(),
        distro_name=run.labels.get(LABEL_DISTRO_NAME, ""),
        distro_version=run.labels.get(LABEL_DISTRO_VERSION, ""),
    )


@attrs.frozen
class Stack:
    """A stack as the engine holds it: its two images (``None`` when missing)."""

    name: str
    build: ImageInfo | None
    run: ImageInfo | None

    @property
    def present(self) -> bool:
        return self.build is not None and self.run is not None


async def inspect(runtime: Runtime, name: str) -> Stack:
    return Stack(
        name,
        await runtime.inspect_image(build_image(name)),
        await runtime.inspect_image(run_image(name)),
    )


def builder_labels(name: str, descriptor: Descriptor) -> dict[str, str]:
    """The build image's labels: the stack id and the lifecycle's (document 002)."""
    metadata = {
        "description": f"lastbackend stack {name}",
        "stack": {"runImage": {"image": run_image(name), "mirrors": []}},
        "buildpacks": [],  # put into each build container at staging; see GET /api/buildpacks
        "created-by": {"name": "lastbackend", "version": _version()},
    }
    return {LABEL_STACK: name, **lifecycle.labels(descriptor, metadata)}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lastbackend")
    except PackageNotFoundError:
        return "unknown"


def build_config(
    name: str, descriptor: Descriptor, path: str = PATH, labels: Mapping[str, str] | None = None
) -> ImageConfig:
    return ImageConfig(
        cmd=("/bin/sh",),
        env={
            "PATH": path,
            "HOME": WORKSPACE,
            "CNB_STACK_ID": name,
            "CNB_USER_ID": str(UID),
            "CNB_GROUP_ID": str(UID),
        },
        labels={**builder_labels(name, descriptor), **(labels or {})},
        workdir=WORKSPACE,
        user=USER,
    )


def run_config(name: str, path: str = PATH, labels: Mapping[str, str] | None = None) -> ImageConfig:
    return ImageConfig(
        cmd=("/bin/sh",),
        env={"PATH": path, "HOME": WORKSPACE},
        labels={LABEL_STACK: name, **(labels or {})},
        workdir=WORKSPACE,
        user=USER,
    )


# -- the busybox rootfs ------------------------------------------------------------------------


def statically_linked(data: bytes) -> bool:
    """A 64-bit ELF without a ``PT_INTERP`` header: it runs in a rootfs with no libc."""
    if data[:5] != b"\x7fELF\x02":
        return False
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    end = phoff + phentsize * phnum
    if phnum and (phentsize < 4 or end > len(data)):
        return False
    types = (int.from_bytes(data[o : o + 4], "little") for o in range(phoff, end, phentsize or 1))
    return 3 not in types  # PT_INTERP: the dynamic loader's path


def applets(busybox: Path) -> tuple[str, ...]:
    """The applets the binary was built with (``busybox --list``), or a fallback set."""
    try:
        listed = subprocess.run(
            [str(busybox), "--list"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return FALLBACK_APPLETS
    return tuple(a for a in listed if a and "/" not in a and a != "busybox") or FALLBACK_APPLETS


def rootfs_tar(busybox: bytes, applet_names: Iterable[str]) -> bytes:
    """The busybox stack's filesystem: the binary, its applets, the user and the CNB dirs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def directory(path: str, mode: int = 0o755, uid: int = 0) -> None:
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, uid, uid
            tar.addfile(info)

        def file(path: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        def link(path: str, target: str) -> None:
            info = tarfile.TarInfo(path)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)

        for path in ("bin", "usr", "usr/bin", "etc", "root", "cnb", "cnb/buildpacks", "platform"):
            directory(path, 0o700 if path == "root" else 0o755)
        directory("platform/env")
        directory("tmp", 0o1777)
        for path in (WORKSPACE, LAYERS):
            directory(path.lstrip("/"), 0o755, UID)
        file("bin/busybox", busybox, 0o755)
        for applet in sorted(set(applet_names) - {"busybox"}):
            link(f"bin/{applet}", "busybox")
        link("usr/bin/env", "/bin/busybox")  # for "#!/usr/bin/env sh" scripts
        file(
            "etc/passwd",
            f"root:x:0:0:root:/root:/bin/sh\n{USER}:x:{UID}:{UID}:{USER}:{WORKSPACE}:/bin/sh\n".encode(),
        )
        file("etc/group", f"root:x:0:\n{USER}:x:{UID}:\n".encode())
    return buf.getvalue()


async def import_stack(runtime: Runtime, name: str, descriptor: Descriptor, rootfs: bytes) -> Stack:
    """Import ``rootfs`` as both images of stack ``name``, labelled for ``descriptor``."""
    await runtime.import_image(rootfs, run_image(name), run_config(name))
    await runtime.import_image(rootfs, build_image(name), build_config(name, descriptor))
    return await inspect(runtime, name)


def stale(stack: Stack, descriptor: Descriptor) -> bool:
    """Missing images, or a build image labelled for another descriptor."""
    if stack.build is None or stack.run is None:
        return True
    want = builder_labels(stack.name, descriptor)
    have = stack.build.labels
    return any(have.get(key) != want[key] for key in (LABEL_STACK, *lifecycle_keys()))


def lifecycle_keys() -> tuple[str, ...]:
    return (lifecycle.LABEL_VERSION, lifecycle.LABEL_APIS)


async def ensure_stack(
    runtime: Runtime,
    name: str,
    descriptor: Descriptor,
    busybox: Path = Path("/bin/busybox"),
    log: Callable[[str], None] | None = None,
) -> Stack:
    """Both images of stack ``name``, built when missing (``busybox`` also when stale).

    ``busybox`` is rebuilt when its lifecycle labels no longer match the descriptor (half a
    second); ``debian`` (:func:`build_debian`, a minute or more) only when missing, saying so in
    ``log``. Another name that is missing is a :class:`StackError` telling the admin to tag its
    images.
    """
    stack = await inspect(runtime, name)
    if name == DEBIAN_STACK:
        if stack.present:
            return stack
        if log is not None:
            log(f"-----> Building stack {name} (first use): {', '.join(DEBIAN_BUILD_PACKAGES)}")
        return await build_debian(runtime, descriptor, log or _discard)
    if not stale(stack, descriptor):
        return stack
    if name != DEFAULT_STACK:
        if stack.present:
            return stack  # an admin's stack: its labels are the admin's business
        raise StackError(
            f"stack {name} is not on this Docker engine: tag its images as {build_image(name)} "
            f"and {run_image(name)} (lastbackend builds only the {', '.join(BUILT_HERE)} stacks)"
        )
    rootfs = await asyncio.to_thread(_busybox_rootfs, busybox)
    return await import_stack(runtime, name, descriptor, rootfs)


DEBIAN_MARKERS = ("requirements.txt", "pyproject.toml", "setup.py", "package.json")
"""Files at an app's root that say it needs an interpreter busybox does not have."""


async def default_stack(runtime: Runtime, configured: str, app_files: Iterable[str] = ()) -> str:
    """The stack of a droplet that names none: ``staging.default_stack`` when set, else
    ``debian`` once its images are on the engine, else ``debian`` for an app with Python or Node
    dependency files (:data:`DEBIAN_MARKERS`: its first need, built then) when mmdebstrap is
    here, else ``busybox``."""
    if configured:
        return configured
    if (await inspect(runtime, DEBIAN_STACK)).present:
        return DEBIAN_STACK
    if set(app_files) & set(DEBIAN_MARKERS) and can_build_debian():
        return DEBIAN_STACK
    return DEFAULT_STACK


def _discard(line: str) -> None:
    pass


# -- the debian stack ----------------------------------------------------------------------------


def can_build_debian() -> bool:
    """Whether :func:`build_debian` can run here (mmdebstrap is installed)."""
    return shutil.which("mmdebstrap") is not None


def apt_sources(apt: Path = Path("/etc/apt")) -> list[Path]:
    """The machine's own apt sources, as mmdebstrap takes them (each file pasted as is)."""
    found = []
    main = apt / "sources.list"
    if main.is_file() and any(
        line.strip() and not line.lstrip().startswith("#") for line in main.read_text().splitlines()
    ):
        found.append(main)
    listed = apt / "sources.list.d"
    if listed.is_dir():
        found += sorted(p for p in listed.iterdir() if p.suffix in (".list", ".sources"))
    return found


def os_release(text: str) -> dict[str, str]:
    """``/etc/os-release`` as a dict (quotes removed)."""
    found = {}
    for line in text.splitlines():
        key, eq, value = line.strip().partition("=")
        if eq and key and not key.startswith("#"):
            found[key] = value.strip().strip("\"'")
    return found


def mmdebstrap_argv(
    suite: str, packages: Iterable[str], out: Path, sources: Iterable[Path]
) -> list[str]:
    """The mmdebstrap command for one image: a minimal root with ``packages``, no recommends,
    no docs or man pages, the stack's user and directories, as a tar at ``out``."""
    hook = (
        f'echo "{USER}:x:{UID}:{UID}:{USER}:{WORKSPACE}:/bin/sh" >> "$1/etc/passwd" && '
        f'echo "{USER}:x:{UID}:" >> "$1/etc/group" && '
        f'mkdir -p "$1{WORKSPACE}" "$1{LAYERS}" "$1{PLATFORM}/env" "$1/cnb/buildpacks" && '
        f'chown {UID}:{UID} "$1{WORKSPACE}" "$1{LAYERS}"'
    )
    return [
        "mmdebstrap",
        "--variant=apt",
        "--format=tar",
        '--aptopt=APT::Install-Recommends "false"',
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        f"--include={','.join(packages)}",
        f"--customize-hook={hook}",
        suite,
        str(out),
        *(str(source) for source in sources),
    ]


async def build_debian(
    runtime: Runtime,
    descriptor: Descriptor,
    log: Callable[[str], None] = _discard,
    *,
    suite: str = "",
    sources: Sequence[Path] | None = None,
    name: str = DEBIAN_STACK,
) -> Stack:
    """The ``debian`` stack, built by mmdebstrap from this machine's apt sources and release
    (as ``name``: a benchmark builds a private copy, never replacing the one in use).

    Nothing is pulled from a container registry: the packages come the way the host's own apt
    gets them (its mirrors, its proxy). The run image gets :data:`DEBIAN_RUN_PACKAGES`, the build
    image :data:`DEBIAN_BUILD_PACKAGES`; both are labelled with the stack id and the
    distribution (``io.buildpacks.base.distro.*``), the build image with the lifecycle's labels.
    """
    if not can_build_debian():
        raise StackError(
            "the debian stack is built with mmdebstrap, which is not installed "
            "(apt-get install mmdebstrap; scripts/bootstrap.sh installs it)"
        )
    host = os_release(_read(Path("/etc/os-release")))
    suite = suite or host.get("VERSION_CODENAME", "")
    if not suite:
        raise StackError("/etc/os-release names no VERSION_CODENAME: pass the Debian suite")
    sources = apt_sources() if sources is None else list(sources)
    with tempfile.TemporaryDirectory(prefix="lb-stack-") as tmp:
        tars = {}
        for kind, packages in (("run", DEBIAN_RUN_PACKAGES), ("build", DEBIAN_BUILD_PACKAGES)):
            out = Path(tmp) / f"{kind}.tar"
            started = time.monotonic()
            await _run(mmdebstrap_argv(suite, packages, out, sources), log)
            tars[kind] = out
            size = out.stat().st_size / 1e6
            log(f"       {kind} image: {size:.0f} MB in {time.monotonic() - started:.0f}s")
        release = os_release(await asyncio.to_thread(_member_text, tars["run"], "etc/os-release"))
        distro = {
            LABEL_DISTRO_NAME: release.get("ID", "debian"),
            LABEL_DISTRO_VERSION: release.get("VERSION_ID", ""),
        }
        run_data = await asyncio.to_thread(tars["run"].read_bytes)
        await runtime.import_image(run_data, run_image(name), run_config(name, DEBIAN_PATH, distro))
        del run_data
        build_data = await asyncio.to_thread(tars["build"].read_bytes)
        config = build_config(name, descriptor, DEBIAN_PATH, distro)
        await runtime.import_image(build_data, build_image(name), config)
    return await inspect(runtime, name)


async def _run(argv: list[str], log: Callable[[str], None]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    tail: list[str] = []
    async for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        tail = [*tail[-19:], line]
        if line.startswith(("E:", "W:")) or "success in" in line:
            log(f"       {line}")
    if await proc.wait() != 0:
        raise StackError(
            f"mmdebstrap failed (exit {proc.returncode}); its last lines:\n" + "\n".join(tail)
        )


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _member_text(archive: Path, name: str) -> str:
    """A text file of a tar by name, following one symlink (``/etc/os-release`` is one)."""
    with tarfile.open(archive) as tar:
        for info in tar:
            if info.name.removeprefix("./") != name:
                continue
            if info.issym():
                target = posixpath.normpath(posixpath.join(posixpath.dirname(name), info.linkname))
                return _member_text(archive, target.lstrip("/"))
            extracted = tar.extractfile(info)
            return extracted.read().decode(errors="replace") if extracted else ""
    return ""


def _busybox_rootfs(busybox: Path) -> bytes:
    try:
        data = busybox.read_bytes()
    except OSError as exc:
        raise StackError(
            f"{busybox}: cannot read busybox ({exc.strerror}); install Debian's busybox-static "
            "or pass --busybox PATH"
        ) from None
    if not statically_linked(data):
        raise StackError(
            f"{busybox}: not a statically linked 64-bit busybox, so it cannot run in an empty "
            "rootfs; install Debian's busybox-static (its /bin/busybox) or pass --busybox PATH"
        )
    return rootfs_tar(data, applets(busybox))


# -- inspect, as pack builder inspect prints it ------------------------------------------------


def describe(stack: Stack) -> str:
    """``lastbackend stack inspect``: the images, the lifecycle their labels declare, the labels."""
    lines = [f"Stack: {stack.name}"]
    for title, ref, info in (
        ("Build image", build_image(stack.name), stack.build),
        ("Run image", run_image(stack.name), stack.run),
    ):
        lines.append(f"{title}: {ref} ({info.id if info else 'missing'})")
    labels: Mapping[str, str] = stack.build.labels if stack.build else {}
    lines += ["", "Lifecycle:", f"  Version: {labels.get(lifecycle.LABEL_VERSION, '(unknown)')}"]
    apis = _json(labels.get(lifecycle.LABEL_APIS))
    for kind, title in (("buildpack", "Buildpack"), ("platform", "Platform")):
        lists = apis.get(kind) if isinstance(apis, dict) else None
        lists = lists if isinstance(lists, dict) else {}
        lines += [
            f"  {title} APIs:",
            f"    Deprecated: {', '.join(lists.get('deprecated') or []) or '(none)'}",
            f"    Supported: {', '.join(lists.get('supported') or []) or '(none)'}",
        ]
    for title, info in (("Build image labels", stack.build), ("Run image labels", stack.run)):
        lines += ["", f"{title}:"]
        lines += [f"  {k}={v}" for k, v in sorted((info.labels if info else {}).items())]
    return "\n".join(lines) + "\n"


def _json(value: str | None) -> Any:
    try:
        return json.loads(value) if value else None
    except json.JSONDecodeError:
        return None
