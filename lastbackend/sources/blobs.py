"""The blob store: package bits and staging logs as files under ``settings.blob_dir``.

Blobs are files, never etcd values (DESIGN.md section 4): etcd keeps every value in memory and
in each member's WAL and snapshot, refuses values over ~1.5 MB, and replicates each write to
every member, so a 100 MB upload there would hurt the whole cluster. etcd holds what is small
and must be consistent (the package's state and sha1); the bytes live here, named by the guid
of the object they belong to:

```
<blob_dir>/packages/<guid>.tar   the package's bits, normalized to an uncompressed tar whose
                                 root is the app directory (see :mod:`.archive`)
<blob_dir>/droplets/<guid>.log   a droplet's staging output, appended by the staging controller
<blob_dir>/build-logs/<id>-<n>.log  build <n> of a service or image <id>: the build output
<blob_dir>/tmp/                  uploads being received and normalized
```

**Several hosts share this directory.** An upload is received by whichever API process the
client reached, and the droplet is staged by whichever process leads the staging controller, so
in a multi-host install ``blob_dir`` (that is, ``<data_dir>/blobs``) must be one shared directory
(NFS or the like) mounted on every API and controller host. The operations are chosen for that:
a blob appears by ``rename`` of a complete, fsynced temporary file from ``tmp/`` on the same
file system, so a reader on any host sees the old state or the whole new file, never half of
one; logs are appended and closed on every call and read by opening afresh (close-to-open
consistency is what NFS guarantees).

The methods are synchronous; each touches one file. ``read_log``, ``append_log``, ``exists`` and
``delete`` are small and may be called from the event loop; whole-blob work (``put_file``,
``read``, hashing, normalizing) belongs in ``asyncio.to_thread``. A blob whose object is gone
(deleted by a cascade, or a crash between the etcd write and the file operation) is removed by
the gc controller.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import BinaryIO

from lastbackend.model.common import is_uuid

BUILD_LOGS = "build-logs"
"""The kind of a build's output, named ``<service or image id>-<build number>``."""
KINDS: dict[str, str] = {
    "packages": ".tar",
    "droplets": ".log",
    BUILD_LOGS: ".log",
    "caches": ".tar",  # an app's cache layers from its last staging, named by the app
}
"""Blob kinds: the directory of each and the suffix of its files."""
LOGS = frozenset({"droplets", BUILD_LOGS})
"""The kinds that are logs, appended line by line."""
LOG_LIMITS = {"droplets": "staging.max_log_bytes", BUILD_LOGS: "builds.max_log_bytes"}
"""The setting that caps each kind of log, named in the line that says where a log was cut."""
CUT_END = b" bytes; later output is dropped\n"
"""How the line that cuts a log ends: a log ending so takes no more."""
TEMP = "tmp"
READ_CHUNK = 1 << 20
"""The most ``read_log`` returns at once."""


class BlobMissing(FileNotFoundError):
    """The blob an object refers to is not in the store."""


class BlobStore:
    """One blob directory; cheap to construct (nothing is touched until a method runs)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"<BlobStore {self.root}>"

    # names -------------------------------------------------------------------------------------

    def path(self, kind: str, guid: str) -> Path:
        """Where a blob lives. ``guid`` must be a UUID (a build log's ``<uuid>-<n>``), so no name
        can leave its directory."""
        _check_kind(kind)
        if not _valid_name(kind, guid):
            shape = "<uuid>-<build number>" if kind == BUILD_LOGS else "UUIDs"
            raise ValueError(f"{kind} blob names are {shape}, got {guid!r}")
        return self.root / kind / f"{guid}{KINDS[kind]}"

    def package_path(self, guid: str) -> Path:
        return self.path("packages", guid)

    def log_path(self, guid: str, kind: str = "droplets") -> Path:
        if kind not in LOGS:
            raise ValueError(f"{kind} blobs are not logs")
        return self.path(kind, guid)

    def temp_path(self, purpose: str = "blob") -> Path:
        """A fresh path under ``tmp/`` (the directory is made, the file is not), on the same
        file system as the blobs so that :meth:`put_file` can rename it into place."""
        tmp = self.root / TEMP
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / f"{purpose}-{os.getpid()}-{os.urandom(8).hex()}"

    # whole blobs -------------------------------------------------------------------------------

    def write(self, kind: str, guid: str, data: bytes, *, durable: bool = True) -> None:
        """Replace a blob atomically: temporary file, fsync, rename. ``durable=False`` skips
        the fsyncs, for a blob whose loss costs only time (an app's build cache: a staging
        after a power cut finds it torn or gone, and builds without it)."""
        tmp = self.temp_path(kind)
        try:
            with open(tmp, "wb") as out:
                out.write(data)
            self.put_file(kind, guid, tmp, durable=durable)
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, kind: str, guid: str, src: Path, *, durable: bool = True) -> None:
        """Move a complete file (made under :meth:`temp_path`) into place as the blob, durably
        unless told otherwise: its data is fsynced before the rename, and the directory after."""
        target = self.path(kind, guid)
        target.parent.mkdir(parents=True, exist_ok=True)
        if durable:
            with open(src, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(src, target)
        if durable:
            _fsync_dir(target.parent)

    def read(self, kind: str, guid: str) -> bytes:
        try:
            return self.path(kind, guid).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(f"no {kind} blob {guid} in {self.root}") from None

    def read_package(self, guid: str) -> bytes:
        """A package's normalized tar (call it in a thread: it may be hundreds of MB)."""
        return self.read("packages", guid)

    def open(self, kind: str, guid: str) -> BinaryIO:
        try:
            return open(self.path(kind, guid), "rb")
        except FileNotFoundError:
            raise BlobMissing(f"no {kind} blob {guid} in {self.root}") from None

    def exists(self, kind: str, guid: str) -> bool:
        return self.path(kind, guid).is_file()

    def delete(self, kind: str, guid: str) -> bool:
        """Remove a blob; False if there was none (deleting twice is not an error)."""
        try:
            self.path(kind, guid).unlink()
        except FileNotFoundError:
            return False
        return True

    def names(self, kind: str) -> list[str]:
        """The guids that have a blob of this kind, sorted."""
        return sorted(self.entries(kind))

    def entries(self, kind: str) -> dict[str, float]:
        """guid -> modification time (epoch seconds) of every blob of this kind."""
        _check_kind(kind)
        suffix = KINDS[kind]
        found: dict[str, float] = {}
        try:
            scan = os.scandir(self.root / kind)
        except FileNotFoundError:
            return found
        with scan:
            for entry in scan:
                guid = entry.name.removesuffix(suffix)
                if entry.name.endswith(suffix) and _valid_name(kind, guid):
                    with contextlib.suppress(FileNotFoundError):
                        found[guid] = entry.stat().st_mtime
        return found

    def sweep_temps(self, older_than: float) -> list[Path]:
        """Remove temporary files untouched for ``older_than`` seconds (uploads cut off by a
        crash); an upload in progress writes its file continually and so is never this old."""
        removed: list[Path] = []
        limit = time.time() - older_than
        try:
            scan = os.scandir(self.root / TEMP)
        except FileNotFoundError:
            return removed
        with scan:
            for entry in scan:
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file() and entry.stat().st_mtime < limit:
                        os.unlink(entry.path)
                        removed.append(Path(entry.path))
        return removed

    # staging logs ------------------------------------------------------------------------------

    def append_log(
        self, guid: str, text: str | bytes, *, kind: str = "droplets", limit: int | None = None
    ) -> bool:
        """Append to a droplet's staging log (or a build's, with ``kind="build-logs"``) as whole
        lines: a missing final newline is added. False when the text was dropped.

        With ``limit``, the log holds at most that many bytes of output: the line that would
        cross it is replaced by one saying where the log was cut and by which setting
        (:data:`LOG_LIMITS`), and everything after it is dropped, so a log is never longer than
        ``limit`` plus that line. The work it logs goes on: only its output is lost.

        Opened, written and closed per call (``O_APPEND``), so a reader on another host sees the
        text as soon as this returns.
        """
        data = text.encode() if isinstance(text, str) else text
        if not data.endswith(b"\n"):
            data += b"\n"
        path = self.log_path(guid, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as out:
            if limit is not None:
                size = os.fstat(out.fileno()).st_size
                if _was_cut(out.fileno(), size):
                    return False
                if size + len(data) > limit:
                    setting = LOG_LIMITS.get(kind, "the log limit")
                    out.write(
                        f"-----> log cut at {size} bytes: {setting} is {limit}".encode() + CUT_END
                    )
                    return False
            out.write(data)
        return True

    def read_log(
        self, guid: str, offset: int = 0, limit: int = READ_CHUNK, *, kind: str = "droplets"
    ) -> tuple[bytes, int]:
        """Up to ``limit`` bytes of the log from ``offset``, and the offset to read from next.
        No log yet (a droplet still PENDING, a build still queued) reads as empty."""
        try:
            with open(self.log_path(guid, kind), "rb") as f:
                f.seek(offset)
                data = f.read(limit)
        except FileNotFoundError:
            return b"", offset
        return data, offset + len(data)


def _was_cut(fd: int, size: int) -> bool:
    """The log open as ``fd`` (``size`` bytes long) ends with the line that cut it."""
    return size >= len(CUT_END) and os.pread(fd, len(CUT_END), size - len(CUT_END)) == CUT_END


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown blob kind {kind!r}; one of {', '.join(KINDS)}")


def _valid_name(kind: str, name: str) -> bool:
    """A UUID; for build logs ``<uuid>-<n>`` (the service or image id and the build number)."""
    if kind == BUILD_LOGS:
        owner, _, number = name.rpartition("-")
        return is_uuid(owner) and number.isdigit() and number == str(int(number))
    return is_uuid(name)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable; some file systems (NFS among them) refuse, harmlessly."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
