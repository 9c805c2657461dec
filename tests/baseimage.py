"""The offline test image: busybox-static, its applets and ``/www/index.html``, via docker import.

Nothing can be pulled here, so the e2e fixtures and the containers benchmark build the same
image from Debian's busybox-static (and reuse it when it is already there).
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import docker
import docker.errors

BASE_IMAGE = "lastbackend-test/busybox:1"
INDEX_HTML = b"hello from lastbackend\n"
APPLETS = ("sh", "cat", "echo", "env", "false", "hostname", "httpd", "id", "kill", "ls", "mkdir")
APPLETS += ("nc", "printf", "ps", "rm", "sleep", "test", "touch", "true", "wget")


class NoStaticBusybox(RuntimeError):
    pass


class NoCurl(RuntimeError):
    pass


def statically_linked(path: Path) -> bool:
    """No ``PT_INTERP`` program header: the binary runs in a rootfs without a libc."""
    data = path.read_bytes()[:65536]
    if data[:5] != b"\x7fELF\x02":  # 64-bit ELF, the only kind Debian ships for amd64/arm64
        return False
    phoff, phentsize, phnum = (
        int.from_bytes(data[32:40], "little"),
        int.from_bytes(data[54:56], "little"),
        int.from_bytes(data[56:58], "little"),
    )
    types = (
        int.from_bytes(data[o : o + 4], "little")
        for o in range(phoff, phoff + phentsize * phnum, phentsize)
    )
    return 3 not in types


def rootfs_tar() -> bytes:
    """A rootfs of busybox-static, its applets as symlinks, and ``/www/index.html``."""
    busybox = shutil.which("busybox")
    if busybox is None or not statically_linked(Path(busybox)):
        raise NoStaticBusybox("no statically linked busybox (Debian: busybox-static)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for directory in ("bin", "tmp", "www", "data"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        page = tarfile.TarInfo("www/index.html")
        page.size, page.mode = len(INDEX_HTML), 0o644
        tar.addfile(page, io.BytesIO(INDEX_HTML))
    return buf.getvalue()


def ensure_base_image(api: docker.APIClient) -> bool:
    """Make sure :data:`BASE_IMAGE` exists; True when it had to be imported."""
    try:
        api.inspect_image(BASE_IMAGE)
        return False
    except docker.errors.ImageNotFound:
        repository, tag = BASE_IMAGE.rsplit(":", 1)
        api.import_image_from_data(
            rootfs_tar(), repository=repository, tag=tag, changes=['CMD ["/bin/sh"]']
        )
        api.inspect_image(BASE_IMAGE)
        return True


CURL_IMAGE = "lastbackend-test/curl:1"
"""The busybox image with the host's ``curl`` and the libraries it links: a TLS client that
verifies certificates (busybox ``wget`` does not), made offline in a second."""


def curl_rootfs_tar() -> bytes:
    """:func:`rootfs_tar` plus ``/usr/bin/curl`` and every library ``ldd`` lists for it, each at
    the path the loader looks in (symlinks followed)."""
    curl = shutil.which("curl")
    if curl is None:
        raise NoCurl("no curl on this host (Debian: curl)")
    listed = subprocess.run(["ldd", curl], check=True, capture_output=True, text=True).stdout
    libraries = sorted(set(re.findall(r"(/\S+) \(0x", listed)))
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(rootfs_tar())) as base,
        tarfile.open(fileobj=out, mode="w") as tar,
    ):
        for member in base:
            tar.addfile(member, base.extractfile(member) if member.isfile() else None)
        for path in [curl, *libraries]:
            tar.add(str(Path(path).resolve()), arcname=path.lstrip("/"))
    return out.getvalue()


def ensure_curl_image(api: docker.APIClient) -> str:
    """Make sure :data:`CURL_IMAGE` exists; returns its name."""
    try:
        api.inspect_image(CURL_IMAGE)
    except docker.errors.ImageNotFound:
        repository, tag = CURL_IMAGE.rsplit(":", 1)
        api.import_image_from_data(
            curl_rootfs_tar(), repository=repository, tag=tag, changes=['CMD ["/bin/sh"]']
        )
    return CURL_IMAGE
