"""Validate an uploaded app archive and normalize it to a plain tar of the app directory.

A bits upload (seed 000) is a zip or a tar.gz (a plain tar is taken too), told apart by its
first bytes, never by its file name: clients name uploads anything. What comes out is an
uncompressed tar whose root is the app directory, holding only directories, regular files,
symlinks and hard links, with clean relative names, no owners, and modes reduced to 0755/0644,
so the staging controller can unpack it anywhere without trusting the client. A single
top-level directory is kept as it is: the archive's root is the app's root. The output holds
the entries the archive holds and no more: the parent directories a name implies are checked
and counted but not written (an unpacker makes them, staging's among them), so one deep name
cannot turn into thousands of entries with long names.

An upload is refused, with an :class:`ArchiveError` whose text is meant for the user (it becomes
the package's ``error``), when it is:

- not a zip, tar.gz or tar, or corrupt, or its metadata is out of range (a PAX number that is
  not a number, a zip date in month 0, an empty name, an offset outside the file);
- larger than the limit, or unpacks to more than it (a zip bomb): the sizes the archive declares
  are checked before any data is copied, and every byte decompressed is counted as well;
- beyond any of the bounds below, each checked before the work it bounds is done;
- holding an entry that would land outside the app directory: an absolute name, a ``..``
  component, a symlink whose target resolves outside (resolved the way the kernel would, through
  the archive's other symlinks), a hard link to anything but a file earlier in the archive, or a
  name that passes through a symlink;
- holding a device file, fifo, socket or sparse file;
- holding no regular file at all.

The bounds, so that neither memory, disk nor CPU grows faster than the upload's own size:

- names: :data:`MAX_NAME` bytes, :data:`MAX_COMPONENT` a component, :data:`MAX_DEPTH` deep;
- :data:`MAX_ENTRIES` entries, the directories names imply included;
- symlinks: targets of :data:`MAX_LINK` bytes, :data:`MAX_HOPS` links followed resolving one,
  and :data:`MAX_RESOLVE_STEPS` path components walked resolving all of them;
- tar: one PAX or GNU long-name header is at most :data:`MAX_HEADER` bytes, at most
  :data:`MAX_CHAIN` of them precede a member, global PAX headers hold :data:`MAX_GLOBAL_KEYS`
  keys, and headers may not outweigh their entries (:data:`META_PER_ENTRY` each, beyond a
  :data:`META_SLACK`);
- zip: the central directory's size, read from the end record before zipfile parses anything,
  is at most :data:`MAX_CENTRAL_DIR`, and its entries are counted before they become objects.

The normalized tar is therefore at most a few times what the archive declares: each entry it
holds costs one header (and a PAX record for a long name) and its content, nothing else.

:func:`normalize` is synchronous and CPU/disk bound: call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import calendar
import collections
import gzip
import hashlib
import lzma
import math
import stat
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any, BinaryIO

import attrs

MAX_ENTRIES = 200_000
"""The most entries an archive may hold, counting the directories its names imply."""
MAX_NAME = 1024
"""The longest entry name, in UTF-8 bytes once cleaned (Linux's PATH_MAX is 4096)."""
MAX_COMPONENT = 255
"""The longest component of a name (Linux's NAME_MAX: a longer one cannot be unpacked)."""
MAX_DEPTH = 128
"""The most components in one name."""
MAX_LINK = 4096
"""The longest symlink target (Linux's PATH_MAX)."""
MAX_HOPS = 40
"""Symlinks followed while resolving one target before it counts as a loop (Linux's ELOOP)."""
MAX_RESOLVE_STEPS = 1_000_000
"""Path components walked resolving every symlink of one archive (about a second of CPU)."""
MAX_HEADER = 64 << 10
"""The largest PAX extended header or GNU long name/link header, read whole by tarfile."""
MAX_CHAIN = 4
"""Extension headers (PAX, GNU long name or link) before one member: tarfile recurses on each."""
MAX_GLOBAL_KEYS = 16
"""Keys of global PAX headers: tarfile applies every one of them to every member."""
META_PER_ENTRY = 8 << 10
"""Header bytes a tar may spend per member (a long name and a long link target fit)."""
META_SLACK = 1 << 20
"""Header bytes a tar may spend beyond ``META_PER_ENTRY`` a member."""
MAX_CENTRAL_DIR = 32 << 20
"""The largest zip central directory (zipfile reads it whole, then makes an object per entry)."""
HEADER = 512
_CHUNK = 1 << 16
_MAX_MTIME = 8**11 - 1
"""The largest mtime a ustar header holds: the output never needs a PAX record for one."""
_PAX = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_EXTENSIONS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, *_PAX)


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


def _shown(raw: str) -> str:
    """A name quoted for a message, cut short: names may be 64 KiB of anything."""
    return repr(raw[:200] + "..." if len(raw) > 200 else raw)


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
        raise ArchiveError(f"the entry {_shown(raw)} has a name that is not valid UTF-8 text")
    if raw.startswith("/"):
        raise ArchiveError(
            f"the entry {_shown(raw)} escapes the app directory: its name is an absolute path"
        )
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"the entry {_shown(raw)} escapes the app directory: it contains '..'")
    name = "/".join(parts)
    if len(name.encode()) > MAX_NAME:
        raise ArchiveError(f"the entry {_shown(raw)} has a name longer than {MAX_NAME} bytes")
    if len(parts) > MAX_DEPTH:
        raise ArchiveError(f"the entry {_shown(raw)} is nested more than {MAX_DEPTH} deep")
    if any(len(p.encode()) > MAX_COMPONENT for p in parts):
        raise ArchiveError(
            f"the entry {_shown(raw)} has a path component longer than {MAX_COMPONENT} bytes"
        )
    return name or None


def _is_text(value: str) -> bool:
    """tarfile decodes undecodable names with surrogate escapes; they cannot be written back."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _mtime(value: Any) -> int:
    """An entry's mtime as the output's header can hold it: a PAX ``nan``, a negative or a
    far-future time is metadata nobody needs, so it is clamped rather than refused."""
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    if not math.isfinite(seconds):
        return 0
    return int(min(max(seconds, 0), _MAX_MTIME))


def _zip_mtime(fields: tuple[int, ...]) -> int:
    """A zip entry's DOS date as epoch seconds; 0 for a date that is not one (month 0)."""
    year, month = fields[0], fields[1]
    if not 1 <= month <= 12:
        return 0
    return _mtime(calendar.timegm((year, month, *fields[2:6], 0, 0, 0)))


# the tree of names -----------------------------------------------------------------------------


class _Tree:
    """Every name in the archive as a tree of components: a parent costs one node however many
    names pass through it, and a step of symlink resolution is one dict lookup, not a join of
    the path so far."""

    def __init__(self) -> None:
        self.children: dict[tuple[int, str], int] = {}
        self.parents: list[int] = [0]
        self.kinds: list[str] = ["dir"]  # "dir" | "implied" | "file" | "symlink" | "hardlink"
        self.links: dict[int, tuple[str, str]] = {}  # symlink node -> (name, target)
        self.steps = 0

    def add(self, name: str, kind: str) -> int | None:
        """Record ``name`` and return its node; None for a directory already written (an
        implied one is written now: its entry had not been)."""
        parts = name.split("/")
        node = 0
        for depth, part in enumerate(parts[:-1], start=1):
            child = self.children.get((node, part))
            if child is None:
                child = self._new(node, part, "implied")
            elif self.kinds[child] == "symlink":
                raise ArchiveError(
                    f"the entry {_shown(name)} goes through the symlink "
                    f"{_shown('/'.join(parts[:depth]))}; archives must not write through links"
                )
            elif self.kinds[child] not in ("dir", "implied"):
                parent = "/".join(parts[:depth])
                raise ArchiveError(
                    f"{_shown(parent)} is both a file and a directory in the archive"
                )
            node = child
        seen = self.children.get((node, parts[-1]))
        if seen is None:
            return self._new(node, parts[-1], kind)
        was = self.kinds[seen]
        if kind == "dir" and was in ("dir", "implied"):
            self.kinds[seen] = "dir"
            return seen if was == "implied" else None
        if "dir" in (was, kind) or was == "implied":
            raise ArchiveError(f"{_shown(name)} is both a file and a directory in the archive")
        raise ArchiveError(f"the entry {_shown(name)} is in the archive twice")

    def _new(self, parent: int, part: str, kind: str) -> int:
        if len(self.kinds) > MAX_ENTRIES:
            raise ArchiveError(
                f"the archive holds more than {MAX_ENTRIES} entries "
                "(counting the directories its names imply)"
            )
        node = len(self.kinds)
        self.children[(parent, part)] = node
        self.parents.append(parent)
        self.kinds.append(kind)
        return node

    def find(self, name: str) -> int | None:
        node = 0
        for part in name.split("/"):
            found = self.children.get((node, part))
            if found is None:
                return None
            node = found
        return node

    def resolve_all(self) -> None:
        for node, (name, target) in self.links.items():
            self._resolve(node, name, target)

    def _resolve(self, link: int, name: str, target: str) -> None:
        """Follow ``name -> target`` through the archive's symlinks as the kernel would once it
        is unpacked; refuse it if it leaves the app directory at any step. A component the
        archive does not hold is followed by name (it may be made at run time), as ``None``."""
        pending = collections.deque(target.split("/"))
        stack: list[int | None] = []  # the directories below the root, innermost last
        node = self.parents[link]
        while node != 0:
            stack.append(node)
            node = self.parents[node]
        stack.reverse()
        hops = 0
        while pending:
            self.steps += 1
            if self.steps > MAX_RESOLVE_STEPS:
                raise ArchiveError(
                    f"the archive's symlinks take too long to check (more than "
                    f"{MAX_RESOLVE_STEPS} path steps, at {_shown(name)}); flatten chains of links"
                )
            part = pending.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    raise ArchiveError(
                        f"the symlink {_shown(name)} points outside the app directory "
                        f"(to {_shown(target)})"
                    )
                stack.pop()
                continue
            here = stack[-1] if stack else 0
            child = None if here is None else self.children.get((here, part))
            if child is not None and self.kinds[child] == "symlink":
                hops += 1
                if hops > MAX_HOPS:
                    raise ArchiveError(f"the symlink {_shown(name)} is a loop of links")
                pending.extendleft(reversed(self.links[child][1].split("/")))
                continue
            stack.append(child)


# the normalized output -------------------------------------------------------------------------


class _Writer:
    """Writes the normalized tar and keeps what the checks across entries need."""

    def __init__(self, out: tarfile.TarFile, limit: int) -> None:
        self.out = out
        self.limit = limit
        self.tree = _Tree()
        self.files = 0
        self.size = 0

    def directory(self, raw: str, mtime: int) -> None:
        name = clean_name(raw)
        if name is not None and self.tree.add(name, "dir") is not None:
            self.out.addfile(_info(name, tarfile.DIRTYPE, 0o755, mtime))

    def file(self, raw: str, mode: int, mtime: int, size: int, data: IO[bytes]) -> None:
        name = clean_name(raw)
        if name is None:
            raise ArchiveError(
                f"the entry {_shown(raw)} is a file where the app directory should be"
            )
        if size < 0:
            raise ArchiveError(f"the entry {_shown(raw)} declares a negative size")
        self.tree.add(name, "file")
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
            raise ArchiveError(
                f"the entry {_shown(raw)} is a link where the app directory should be"
            )
        if not target or "\0" in target or len(target) > MAX_LINK or not _is_text(target):
            raise ArchiveError(f"the symlink {_shown(name)} has an unusable target")
        if target.startswith("/"):
            raise ArchiveError(
                f"the symlink {_shown(name)} points outside the app directory (to "
                f"{_shown(target)}, an absolute path); use a relative link"
            )
        node = self.tree.add(name, "symlink")
        assert node is not None
        self.tree.links[node] = (name, target)
        info = _info(name, tarfile.SYMTYPE, 0o777, mtime)
        info.linkname = target
        self.out.addfile(info)

    def hardlink(self, raw: str, target_raw: str, mtime: int) -> None:
        name = clean_name(raw)
        try:
            target = clean_name(target_raw)
        except ArchiveError:
            target = None
        node = self.tree.find(target) if target is not None else None
        if name is None or target is None or node is None or self.tree.kinds[node] != "file":
            raise ArchiveError(
                f"the hard link {_shown(raw)} points outside the app directory or to something "
                f"that is not a file earlier in the archive ({_shown(target_raw)})"
            )
        self.tree.add(name, "hardlink")
        info = _info(name, tarfile.LNKTYPE, 0o644, mtime)
        info.linkname = target
        self.out.addfile(info)
        self.files += 1

    def finish(self) -> None:
        """The checks that need every entry: symlinks resolve inside, something is there."""
        self.tree.resolve_all()
        if self.files == 0:
            raise ArchiveError("the archive holds no files")


def _info(name: str, kind: bytes, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = _mtime(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _Exact:
    """Reads exactly ``size`` bytes of an entry, refusing a short one as truncated and one that
    cannot be decompressed as corrupt (bz2 says so with an ``OSError``)."""

    def __init__(self, data: IO[bytes], size: int, name: str) -> None:
        self.data = data
        self.left = size
        self.name = name

    def read(self, n: int = -1) -> bytes:
        want = self.left if n < 0 else min(n, self.left)
        try:
            chunk = self.data.read(want) if want else b""
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise ArchiveError(f"the entry {_shown(self.name)} is corrupt ({exc})") from None
        if len(chunk) < want:
            raise ArchiveError(f"the archive is truncated: {_shown(self.name)} is cut short")
        self.left -= len(chunk)
        return chunk


class _Counted:
    """A reader that refuses to yield more than ``cap`` bytes in total: whatever the headers
    say, decompression stops there."""

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


# tar -------------------------------------------------------------------------------------------


class _Header(tarfile.TarInfo):
    """tarfile's header parser with the bounds applied before each read it would make whole.

    tarfile reads a PAX or GNU long-name header into memory in one piece, recurses once per
    extension header, applies every global PAX key to every member, and parses PAX records with
    a regular expression that backtracks quadratically over malformed ones; each of those is
    checked here first.
    """

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _sparse(self.name)
        if self.type not in _EXTENSIONS:
            return super()._proc_member(tar)  # type: ignore[misc, no-any-return]
        if self.size > MAX_HEADER:
            raise ArchiveError(
                f"the tar archive has a {'PAX' if self.type in _PAX else 'GNU'} "
                f"header of {human(self.size)}, more than the limit of {human(MAX_HEADER)}"
            )
        chain: int = getattr(tar, "_lb_chain", 0) + 1
        if chain > MAX_CHAIN:
            raise ArchiveError(
                f"the tar archive has more than {MAX_CHAIN} extension headers for one entry"
            )
        tar._lb_chain = chain  # type: ignore[attr-defined]
        try:
            return super()._proc_member(tar)  # type: ignore[misc, no-any-return]
        finally:
            tar._lb_chain = chain - 1  # type: ignore[attr-defined]

    def _proc_pax(self, tar: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        """tarfile's PAX step, with a linear parse of the records: tarfile's regular
        expressions backtrack quadratically (11 s of CPU for one 64 KiB header of digits)."""
        assert tar.fileobj is not None
        records = _pax_records(tar.fileobj.read(self._block(self.size))[: self.size])  # type: ignore[attr-defined]
        if any(key.startswith(b"GNU.sparse.") for key, _ in records):
            raise _sparse(self.name)
        glob = self.type == tarfile.XGLTYPE
        headers = tar.pax_headers if glob else dict(tar.pax_headers)
        binary = any(k == b"hdrcharset" and v == b"BINARY" for k, v in records)
        for key, value in records:
            name = _pax_text(key, "utf-8")
            binary_name = binary and name in tarfile.PAX_NAME_FIELDS
            encoding = tar.encoding if binary_name else "utf-8"
            headers[name] = _pax_text(value, encoding)
        if glob and len(headers) > MAX_GLOBAL_KEYS:
            raise ArchiveError(
                f"the tar archive's global PAX headers hold more than {MAX_GLOBAL_KEYS} keys"
            )
        try:
            following = self.fromtarfile(tar)
        except tarfile.HeaderError as exc:
            raise tarfile.ReadError(str(exc)) from None
        if not glob:
            following._apply_pax_info(headers, tar.encoding, tar.errors)  # type: ignore[attr-defined]
            following.offset = self.offset
            if "size" in headers:  # the data's size changed: so has where the next header is
                offset = following.offset_data
                if following.isreg() or following.type not in tarfile.SUPPORTED_TYPES:
                    offset += following._block(following.size)  # type: ignore[attr-defined]
                tar.offset = offset
        return following


def _pax_records(buf: bytes) -> list[tuple[bytes, bytes]]:
    """The ``<length> <key>=<value>\n`` records of a PAX header, each where the one before
    ends; NUL padding ends them."""
    records: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(buf) and buf[pos] != 0:
        space = buf.find(b" ", pos, pos + 21)
        digits = buf[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise ArchiveError("the tar archive has a malformed PAX header (a record's length)")
        end = pos + int(digits)
        equals = buf.find(b"=", space + 1, end)
        if end > len(buf) or equals <= space + 1 or buf[end - 1 : end] != b"\n":
            raise ArchiveError("the tar archive has a malformed PAX header (a record)")
        records.append((buf[space + 1 : equals], buf[equals + 1 : end - 1]))
        pos = end
    return records


def _pax_text(raw: bytes, encoding: str) -> str:
    """UTF-8 as POSIX says; old GNU tars wrote raw names without saying so, which come out
    with surrogate escapes and are refused as names later."""
    try:
        return raw.decode(encoding, "strict")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")


def _sparse(name: str) -> ArchiveError:
    return ArchiveError(f"the entry {_shown(name)} is a sparse file; archive it without --sparse")


def _from_tar(src: BinaryIO, writer: _Writer, *, compressed: bool) -> None:
    raw: IO[bytes] = gzip.GzipFile(fileobj=src, mode="rb") if compressed else src
    if compressed:
        head = raw.read(HEADER)
        if not _is_tar(head):
            raise ArchiveError("the upload is gzip-compressed but does not hold a tar archive")
        src.seek(0)
        raw = gzip.GzipFile(fileobj=src, mode="rb")
    stream = _Counted(raw, writer.limit + META_SLACK + MAX_ENTRIES * META_PER_ENTRY, writer.limit)
    members = content = 0
    with tarfile.open(fileobj=stream, mode="r|", tarinfo=_Header) as tar:  # type: ignore[call-overload]
        while (member := tar.next()) is not None:
            tar.members.clear()  # tarfile keeps every member read; nothing here needs them
            members += 1
            _one_member(tar, member, writer)
            if member.isreg():
                content += -(-member.size // HEADER) * HEADER
            if stream.total - content > META_SLACK + members * META_PER_ENTRY:
                raise ArchiveError(
                    "the tar archive's headers are larger than its entries need "
                    f"(more than {human(META_PER_ENTRY)} an entry)"
                )


def _one_member(tar: tarfile.TarFile, member: tarfile.TarInfo, writer: _Writer) -> None:
    mtime = _mtime(member.mtime)
    if member.sparse is not None:
        raise _sparse(member.name)
    if member.isdir():
        writer.directory(member.name, mtime)
    elif member.isreg():
        if member.size > writer.limit - writer.size:
            raise unpacks_too_large(writer.limit)
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
        f"the entry {_shown(name)} is {what}; only files, directories and links are allowed"
    )


# zip -------------------------------------------------------------------------------------------

_EOCD = b"PK\x05\x06"
_EOCD64 = b"PK\x06\x06"
_LOCATOR64 = b"PK\x06\x07"
_CENTRAL = b"PK\x01\x02"


def _corrupt_zip(why: str) -> ArchiveError:
    return ArchiveError(f"the zip archive is corrupt or truncated ({why})")


def _central_directory(f: BinaryIO, size: int) -> int:
    """The size of the zip's central directory as zipfile will read it (the end record's, or
    the zip64 end record's), refused past :data:`MAX_CENTRAL_DIR` and past
    :data:`MAX_ENTRIES` records, before zipfile parses it into an object per entry."""
    start = max(0, size - 22 - 0xFFFF)
    f.seek(start)
    tail = f.read()
    if tail[-22:-18] == _EOCD and tail[-2:] == b"\0\0":
        at = len(tail) - 22
    else:
        at = tail.rfind(_EOCD)
        if at < 0 or len(tail) - at < 22:
            raise _corrupt_zip("no end of central directory record")
    cd_size = struct.unpack_from("<L", tail, at + 12)[0]
    end = start + at
    if end >= 20:
        f.seek(end - 20)
        if f.read(4) == _LOCATOR64 and end >= 76:
            f.seek(end - 76)
            record = f.read(56)
            if record[:4] == _EOCD64:
                cd_size = struct.unpack_from("<Q", record, 40)[0]
                end -= 76
    if cd_size > MAX_CENTRAL_DIR:
        raise ArchiveError(
            f"the zip archive's central directory is {human(cd_size)}, more than the limit of "
            f"{human(MAX_CENTRAL_DIR)}"
        )
    if cd_size > end:
        raise _corrupt_zip("the central directory starts before the file")
    f.seek(end - cd_size)
    directory = f.read(cd_size)
    pos = count = 0
    while pos + 46 <= len(directory) and directory[pos : pos + 4] == _CENTRAL:
        count += 1
        if count > MAX_ENTRIES:
            raise ArchiveError(f"the archive holds more than {MAX_ENTRIES} entries")
        names, extra, comment = struct.unpack_from("<3H", directory, pos + 28)
        pos += 46 + names + extra + comment
    return cd_size


class _BadOffset(OSError):
    """A seek before the start of the upload: an ``OSError`` as a file's would be (zipfile
    probes for a zip64 record that way), told apart from a real I/O fault by its class."""


class _ZipSource:
    """The upload as zipfile reads it: an offset before the start of the file is a corrupt
    archive (:class:`_BadOffset`), and no single read may exceed ``most`` bytes, so zipfile
    cannot read a central directory larger than the one checked."""

    def __init__(self, f: BinaryIO, size: int, most: int) -> None:
        self.f = f
        self.size = size
        self.most = most

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self.f.tell(), self.size)[whence]
        if base + offset < 0:
            raise _BadOffset("an offset points before the start of the file")
        return self.f.seek(base + offset)

    def tell(self) -> int:
        return self.f.tell()

    def seekable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        want = self.size - self.f.tell() if n is None or n < 0 else n
        if want > self.most:
            raise _corrupt_zip(f"a read of {human(want)} at once")
        return self.f.read(want)


def _from_zip(src: BinaryIO, writer: _Writer) -> None:
    size = src.seek(0, 2)
    cd_size = _central_directory(src, size)
    source = _ZipSource(src, size, max(cd_size, 1 << 20))
    with zipfile.ZipFile(source) as archive:  # type: ignore[arg-type]
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise ArchiveError(f"the archive holds more than {MAX_ENTRIES} entries")
        if sum(info.file_size for info in infos) > writer.limit:
            raise unpacks_too_large(writer.limit)
        for info in infos:
            _one_entry(archive, info, writer)


def _one_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, writer: _Writer) -> None:
    name = info.filename.replace("\\", "/")  # some Windows tools write backslashes
    if not name:
        raise ArchiveError("the zip archive has an entry with an empty name")
    if info.flag_bits & 0x1:
        raise ArchiveError(f"the entry {_shown(name)} is encrypted; upload it unencrypted")
    mode = (info.external_attr >> 16) & 0xFFFF if info.create_system == 3 else 0
    kind = stat.S_IFMT(mode)
    mtime = _zip_mtime(info.date_time)
    if info.is_dir() or kind == stat.S_IFDIR:
        writer.directory(name, mtime)
    elif kind == stat.S_IFLNK:
        if info.file_size > MAX_LINK:
            raise ArchiveError(f"the symlink {_shown(name)} has an unusable target")
        with archive.open(info) as data:
            target = _Exact(data, info.file_size, name).read()
        writer.symlink(name, target.decode("utf-8", errors="replace"), mtime)
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


_CORRUPT = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    lzma.LZMAError,
    struct.error,
    OverflowError,
)
"""What the parsers raise for bytes they cannot make sense of."""


def _read(kind: str, src: BinaryIO, writer: _Writer) -> None:
    label = "zip" if kind == "zip" else "tar.gz" if kind == "gzip" else "tar"
    try:
        if kind == "zip":
            _from_zip(src, writer)
        else:
            _from_tar(src, writer, compressed=kind == "gzip")
    except ArchiveError:
        raise
    except (*_CORRUPT, _BadOffset) as exc:
        raise ArchiveError(f"the {label} archive is corrupt or truncated ({exc})") from None
    except NotImplementedError as exc:  # zipfile: a compression method it cannot read
        raise ArchiveError(f"the zip archive uses an unsupported compression: {exc}") from None
    except UnicodeError:
        raise ArchiveError(f"the {label} archive has an entry name that is not text") from None
    except ValueError as exc:  # a header field out of range (int() of a PAX value and the like)
        raise ArchiveError(f"the {label} archive has a header field out of range ({exc})") from None
