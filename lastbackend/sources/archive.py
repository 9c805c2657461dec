"""Validate an uploaded app archive and normalize it to a plain tar of the app directory.

A bits upload (seed 000) is a zip or a tar.gz (a plain tar is taken too), told apart by its
first bytes, never by its file name: clients name uploads anything. What comes out is an
uncompressed tar whose root is the app directory, holding only directories, regular files,
symlinks and hard links, with clean relative names, no owners, and modes reduced to 0755/0644,
so the staging controller can unpack it anywhere without trusting the client. A single
top-level directory is kept as it is: the archive's root is the app's root.

An upload is refused, with an :class:`ArchiveError` whose text is meant for the user (it becomes
the package's ``error``), when it is:

- not a zip, tar.gz or tar, or corrupt;
- larger than the limit, or unpacks to more than it (a zip bomb): the sizes the archive declares
  are checked before any data is copied, and every byte decompressed is counted as well, since
  a tar's headers can hide gigabytes of metadata;
- holding an entry that would land outside the app directory: an absolute name, a ``..``
  component, a symlink whose target resolves outside (resolved the way the kernel would, through
  the archive's other symlinks), a hard link to anything but a file earlier in the archive, or a
  name that passes through a symlink;
- holding a device file, fifo or socket;
- holding no regular file at all.

:func:`normalize` is synchronous and CPU/disk bound: call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import calendar
import collections
import gzip
import hashlib
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, BinaryIO

import attrs

MAX_ENTRIES = 200_000
"""The most entries an archive may hold: each costs memory while it is checked."""
MAX_LINK = 4096
"""The longest symlink target (Linux's PATH_MAX)."""
MAX_HOPS = 40
"""Symlinks followed while resolving one target before it counts as a loop (Linux's ELOOP)."""
HEADER = 512
_CHUNK = 1 << 16


class ArchiveError(ValueError):
    """An upload that cannot be used; ``str()`` is a sentence for the user."""


@attrs.frozen
class Normalized:
    sha1: str
    """Of the bytes as uploaded: the package's ``hash.value`` (seed 000)."""
    files: int
    size: int
    """Bytes of file content once unpacked."""


def human(n: int) -> str:
    """``1.5 MiB``: sizes in messages for people."""
    if n < 1024:
        return f"{n} bytes"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.4g} {unit}"
        value /= 1024
    return f"{value:.4g} GiB"


def too_large(limit: int) -> ArchiveError:
    return ArchiveError(f"the upload is larger than the limit of {human(limit)}")


def unpacks_too_large(limit: int) -> ArchiveError:
    return ArchiveError(f"the archive unpacks to more than the limit of {human(limit)}")


# detection -------------------------------------------------------------------------------------

_OTHER_FORMATS = {
    b"BZh": "bzip2-compressed data",
    b"\xfd7zXZ\x00": "xz-compressed data",
    b"(\xb5/\xfd": "zstd-compressed data",
    b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive",
    b"Rar!": "a RAR archive",
    b"%PDF": "a PDF document",
    b"\x7fELF": "an executable",
}


def _is_tar(head: bytes) -> bool:
    return len(head) >= 262 and head[257:262] == b"ustar"


def sniff(head: bytes) -> str | None:
    """``"zip"``, ``"gzip"``, ``"tar"`` or None, from an upload's first 512 bytes."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if _is_tar(head):
        return "tar"
    return None


def _not_an_archive(head: bytes) -> ArchiveError:
    what = next((name for magic, name in _OTHER_FORMATS.items() if head.startswith(magic)), None)
    seen = f" (it looks like {what})" if what else ""
    return ArchiveError(f"the upload is not a zip or tar.gz archive{seen}")


# names -----------------------------------------------------------------------------------------


def clean_name(raw: str) -> str | None:
    """An entry's name relative to the app directory; None for the directory itself.

    ``./a//b/`` is ``a/b``. An absolute name or a ``..`` component is refused rather than
    rewritten: an archive that tries to escape is not one to guess about.
    """
    if "\0" in raw or not _is_text(raw):
        raise ArchiveError(f"the entry {raw[:200]!r} has a name that is not valid UTF-8 text")
    if raw.startswith("/"):
        raise ArchiveError(
            f"the entry {raw[:200]!r} escapes the app directory: its name is an absolute path"
        )
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"the entry {raw[:200]!r} escapes the app directory: it contains '..'")
    return "/".join(parts) or None


def _is_text(value: str) -> bool:
    """tarfile decodes undecodable names with surrogate escapes; they cannot be written back."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


# the normalized output -------------------------------------------------------------------------


class _Writer:
    """Writes the normalized tar and keeps what the checks across entries need."""

    def __init__(self, out: tarfile.TarFile, limit: int) -> None:
        self.out = out
        self.limit = limit
        self.kinds: dict[str, str] = {}  # name -> "dir" | "file" | "symlink" | "hardlink"
        self.symlinks: dict[str, str] = {}
        self.files = 0
        self.size = 0

    def _claim(self, name: str, kind: str) -> bool:
        """Record ``name`` (making its parent directories); False for a repeated directory."""
        if len(self.kinds) >= MAX_ENTRIES:
            raise ArchiveError(f"the archive holds more than {MAX_ENTRIES} entries")
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            seen = self.kinds.get(parent)
            if seen is None:
                self._dir(parent, 0)
            elif seen == "symlink":
                raise ArchiveError(
                    f"the entry {name!r} goes through the symlink {parent!r}; "
                    "archives must not write through links"
                )
            elif seen != "dir":
                raise ArchiveError(f"{parent!r} is both a file and a directory in the archive")
        seen = self.kinds.get(name)
        if seen is not None:
            if seen == "dir" and kind == "dir":
                return False
            if "dir" in (seen, kind):
                raise ArchiveError(f"{name!r} is both a file and a directory in the archive")
            raise ArchiveError(f"the entry {name!r} is in the archive twice")
        self.kinds[name] = kind
        return True

    def _dir(self, name: str, mtime: int) -> None:
        self.kinds[name] = "dir"
        info = _info(name, tarfile.DIRTYPE, 0o755, mtime)
        self.out.addfile(info)

    def directory(self, raw: str, mtime: int) -> None:
        name = clean_name(raw)
        if name is not None and self._claim(name, "dir"):
            self.out.addfile(_info(name, tarfile.DIRTYPE, 0o755, mtime))

    def file(self, raw: str, mode: int, mtime: int, size: int, data: IO[bytes]) -> None:
        name = clean_name(raw)
        if name is None:
            raise ArchiveError(f"the entry {raw!r} is a file where the app directory should be")
        self._claim(name, "file")
        self.size += size
        if self.size > self.limit:
            raise unpacks_too_large(self.limit)
        info = _info(name, tarfile.REGTYPE, 0o755 if mode & 0o111 else 0o644, mtime)
        info.size = size
        self.out.addfile(info, _Exact(data, size, name))
        self.files += 1

    def symlink(self, raw: str, target: str, mtime: int) -> None:
        name = clean_name(raw)
        if name is None:
            raise ArchiveError(f"the entry {raw!r} is a link where the app directory should be")
        if not target or "\0" in target or len(target) > MAX_LINK or not _is_text(target):
            raise ArchiveError(f"the symlink {name!r} has an unusable target")
        if target.startswith("/"):
            raise ArchiveError(
                f"the symlink {name!r} points outside the app directory (to {target!r}, "
                "an absolute path); use a relative link"
            )
        self._claim(name, "symlink")
        self.symlinks[name] = target
        info = _info(name, tarfile.SYMTYPE, 0o777, mtime)
        info.linkname = target
        self.out.addfile(info)

    def hardlink(self, raw: str, target_raw: str, mtime: int) -> None:
        name = clean_name(raw)
        try:
            target = clean_name(target_raw)
        except ArchiveError:
            target = None
        if name is None or target is None or self.kinds.get(target) != "file":
            raise ArchiveError(
                f"the hard link {raw!r} points outside the app directory or to something that "
                f"is not a file earlier in the archive ({target_raw!r})"
            )
        self._claim(name, "hardlink")
        info = _info(name, tarfile.LNKTYPE, 0o644, mtime)
        info.linkname = target
        self.out.addfile(info)
        self.files += 1

    def finish(self) -> None:
        """The checks that need every entry: symlinks resolve inside, something is there."""
        for name, target in self.symlinks.items():
            self._resolve(name, target)
        if self.files == 0:
            raise ArchiveError("the archive holds no files")

    def _resolve(self, name: str, target: str) -> None:
        """Follow ``name -> target`` through the archive's symlinks as the kernel would once it
        is unpacked; refuse it if it leaves the app directory at any step."""
        pending = collections.deque(name.split("/")[:-1] + target.split("/"))
        stack: list[str] = []
        hops = 0
        while pending:
            part = pending.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    raise ArchiveError(
                        f"the symlink {name!r} points outside the app directory (to {target!r})"
                    )
                stack.pop()
                continue
            stack.append(part)
            link = self.symlinks.get("/".join(stack))
            if link is None:
                continue
            hops += 1
            if hops > MAX_HOPS or link.startswith("/"):
                what = "is a loop of links" if hops > MAX_HOPS else "points outside the app dir"
                raise ArchiveError(f"the symlink {name!r} {what} (through {'/'.join(stack)!r})")
            stack.pop()
            pending.extendleft(reversed(link.split("/")))


def _info(name: str, kind: bytes, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = max(0, int(mtime))
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _Exact:
    """Reads exactly ``size`` bytes of an entry, refusing a short one as truncated."""

    def __init__(self, data: IO[bytes], size: int, name: str) -> None:
        self.data = data
        self.left = size
        self.name = name

    def read(self, n: int = -1) -> bytes:
        want = self.left if n < 0 else min(n, self.left)
        chunk = self.data.read(want) if want else b""
        if len(chunk) < want:
            raise ArchiveError(f"the archive is truncated: {self.name!r} is cut short")
        self.left -= len(chunk)
        return chunk


class _Counted:
    """A reader that refuses to yield more than ``cap`` bytes in total (a decompression bomb
    hidden in tar metadata: long-name or pax headers are read whole into memory)."""

    def __init__(self, raw: IO[bytes], cap: int, limit: int) -> None:
        self.raw = raw
        self.cap = cap
        self.limit = limit
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        chunk = self.raw.read(n)
        self.total += len(chunk)
        if self.total > self.cap:
            raise unpacks_too_large(self.limit)
        return chunk


# readers ---------------------------------------------------------------------------------------


def _from_tar(src: BinaryIO, writer: _Writer, *, compressed: bool) -> None:
    raw: IO[bytes] = gzip.GzipFile(fileobj=src, mode="rb") if compressed else src
    if compressed:
        head = raw.read(HEADER)
        if not _is_tar(head):
            raise ArchiveError("the upload is gzip-compressed but does not hold a tar archive")
        src.seek(0)
        raw = gzip.GzipFile(fileobj=src, mode="rb")
    # Headers and padding cost at most ~1.5 KiB an entry on top of the content.
    cap = writer.limit + MAX_ENTRIES * 3 * HEADER
    stream = _Counted(raw, cap, writer.limit)
    with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            mtime = int(member.mtime)
            if member.isdir():
                writer.directory(member.name, mtime)
            elif member.isreg():
                data = tar.extractfile(member)
                assert data is not None
                writer.file(member.name, member.mode, mtime, member.size, data)
            elif member.issym():
                writer.symlink(member.name, member.linkname, mtime)
            elif member.islnk():
                writer.hardlink(member.name, member.linkname, mtime)
            else:
                raise _special(member.name, member.ischr() or member.isblk(), member.isfifo())


def _special(name: str, device: bool, fifo: bool) -> ArchiveError:
    what = "a device file" if device else "a fifo" if fifo else "not a file, directory or link"
    return ArchiveError(
        f"the entry {name!r} is {what}; only files, directories and links are allowed"
    )


def _from_zip(src: BinaryIO, writer: _Writer) -> None:
    with zipfile.ZipFile(src) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise ArchiveError(f"the archive holds more than {MAX_ENTRIES} entries")
        if sum(info.file_size for info in infos) > writer.limit:
            raise unpacks_too_large(writer.limit)
        for info in infos:
            name = info.filename.replace("\\", "/")  # some Windows tools write backslashes
            if info.flag_bits & 0x1:
                raise ArchiveError(f"the entry {name!r} is encrypted; upload it unencrypted")
            mode = (info.external_attr >> 16) & 0xFFFF if info.create_system == 3 else 0
            kind = stat.S_IFMT(mode)
            mtime = calendar.timegm((*info.date_time, 0, 0, 0))
            if info.is_dir() or kind == stat.S_IFDIR:
                writer.directory(name, mtime)
            elif kind == stat.S_IFLNK:
                if info.file_size > MAX_LINK:
                    raise ArchiveError(f"the symlink {name!r} has an unusable target")
                target = archive.read(info).decode("utf-8", errors="replace")
                writer.symlink(name, target, mtime)
            elif kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
                device = kind in (stat.S_IFCHR, stat.S_IFBLK)
                raise _special(name, device, kind == stat.S_IFIFO)
            else:
                with archive.open(info) as data:
                    writer.file(name, mode or 0o644, mtime, info.file_size, data)


# the entry point -------------------------------------------------------------------------------


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def normalize(src: Path, dest: Path, *, limit: int) -> Normalized:
    """Check the upload at ``src`` and write its normalized tar to ``dest``.

    Raises :class:`ArchiveError` (and leaves no ``dest``) when the upload is refused.
    """
    if src.stat().st_size > limit:
        raise too_large(limit)
    digest = sha1_of(src)
    try:
        with open(src, "rb") as f, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
            head = f.read(HEADER)
            kind = sniff(head)
            if kind is None:
                raise _not_an_archive(head)
            f.seek(0)
            writer = _Writer(out, limit)
            _read(kind, f, writer)
            writer.finish()
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return Normalized(digest, writer.files, writer.size)


def _read(kind: str, src: BinaryIO, writer: _Writer) -> None:
    label = "zip" if kind == "zip" else "tar.gz" if kind == "gzip" else "tar"
    try:
        if kind == "zip":
            _from_zip(src, writer)
        else:
            _from_tar(src, writer, compressed=kind == "gzip")
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError) as exc:
        raise ArchiveError(f"the {label} archive is corrupt or truncated ({exc})") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"the {label} archive is corrupt or truncated ({exc})") from None
    except NotImplementedError as exc:  # zipfile: a compression method it cannot read
        raise ArchiveError(f"the zip archive uses an unsupported compression: {exc}") from None
    except UnicodeDecodeError:
        raise ArchiveError(f"the {label} archive has an entry name that is not text") from None
