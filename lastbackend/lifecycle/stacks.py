"""Stacks: named pairs of images, one to build apps in and one to run them on.

A stack ``<name>`` is ``lastbackend/stack-build:<name>`` (where buildpacks detect and build) and
``lastbackend/stack-run:<name>`` (what a droplet image is made from). Both carry
``io.buildpacks.stack.id=<name>``; the build image also carries the lifecycle labels of document
002 (``io.buildpacks.lifecycle.version``, ``io.buildpacks.lifecycle.apis`` and the backwards
compatible ``io.buildpacks.builder.metadata``), which ``lastbackend stack inspect`` prints the
way ``pack builder inspect`` does.

The default stack, ``busybox``, is built here with nothing to pull: a rootfs of Debian's
busybox-static binary and its applets, imported as an image (``docker import``). It has a
non-root user ``lb`` (uid 1000) that builds and runs apps, and the directories of the buildpack
contract: ``/workspace`` (the app), ``/layers``, ``/platform``, ``/cnb``, ``/tmp``. Any other
stack is a pair of images an admin tags with these names; the same labels and paths are expected.

:func:`ensure_stack` is idempotent and cheap when the images are there (two inspects): call it
before staging. It rebuilds a stack whose lifecycle labels no longer match the descriptor, so a
changed ``lifecycle.toml`` reaches the builder image.
"""

from __future__ import annotations

import asyncio
import io
import json
import platform
import subprocess
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from lastbackend.lifecycle import descriptor as lifecycle
from lastbackend.lifecycle.contract import Target
from lastbackend.lifecycle.descriptor import Descriptor
from lastbackend.runtime.base import ImageConfig, ImageInfo, Runtime

DEFAULT_STACK = "busybox"
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


def build_config(name: str, descriptor: Descriptor) -> ImageConfig:
    return ImageConfig(
        cmd=("/bin/sh",),
        env={
            "PATH": PATH,
            "HOME": WORKSPACE,
            "CNB_STACK_ID": name,
            "CNB_USER_ID": str(UID),
            "CNB_GROUP_ID": str(UID),
        },
        labels=builder_labels(name, descriptor),
        workdir=WORKSPACE,
        user=USER,
    )


def run_config(name: str) -> ImageConfig:
    return ImageConfig(
        cmd=("/bin/sh",),
        env={"PATH": PATH, "HOME": WORKSPACE},
        labels={LABEL_STACK: name},
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
) -> Stack:
    """Both images of stack ``name``, built from ``busybox`` when missing or stale.

    Only the default stack can be built here; another name that is missing is a
    :class:`StackError` telling the admin to tag its images.
    """
    stack = await inspect(runtime, name)
    if not stale(stack, descriptor):
        return stack
    if name != DEFAULT_STACK:
        if stack.present:
            return stack  # an admin's stack: its labels are the admin's business
        raise StackError(
            f"stack {name} is not on this Docker engine: tag its images as {build_image(name)} "
            f"and {run_image(name)} (lastbackend builds only the {DEFAULT_STACK} stack)"
        )
    rootfs = await asyncio.to_thread(_busybox_rootfs, busybox)
    return await import_stack(runtime, name, descriptor, rootfs)


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
