"""Pack an app directory into a tar.gz the same way every time: the same files give the same
bytes, so the same sha1 (what the API reports as the package's ``hash``).

Entries are sorted by name, every mtime is 0, owners are 0:0, modes are 0755 or 0644 (only the
executable bit is kept), gzip carries no name or time. Skipped: ``.git`` and whatever
``.lbignore`` or ``.cfignore`` lists (Cloud Foundry's convention), one pattern a line, ``#``
comments, gitignore-like: a pattern with a ``/`` is matched from the directory's root, one without
against every name; a trailing ``/`` matches directories only.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import attrs

IGNORE_FILES = (".lbignore", ".cfignore")
ALWAYS_SKIPPED = (".git",)


@attrs.frozen
class Packed:
    path: Path
    size: int
    sha1: str
    files: int


class PackError(Exception):
    """The directory cannot be packed: missing, unreadable, or nothing left to upload."""


def ignore_patterns(root: Path) -> list[str]:
    patterns: list[str] = []
    for name in IGNORE_FILES:
        file = root / name
        if file.is_file():
            for line in file.read_text(errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    patterns.append(line)
    return patterns


def ignored(relative: str, is_dir: bool, patterns: list[str]) -> bool:
    """Whether ``relative`` (posix, from the root) is left out."""
    name = relative.rsplit("/", 1)[-1]
    if name in ALWAYS_SKIPPED:
        return True
    for pattern in patterns:
        dir_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        if not pattern or (dir_only and not is_dir):
            continue
        if "/" in pattern:
            if fnmatch.fnmatchcase(relative, pattern.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def entries(root: Path) -> Iterator[tuple[str, Path]]:
    """Every kept file, directory and symlink under ``root``, sorted, as (name, path)."""
    patterns = ignore_patterns(root)

    def walk(directory: Path, prefix: str) -> Iterator[tuple[str, Path]]:
        try:
            children = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise PackError(f"path: cannot read {directory}: {exc.strerror}") from None
        for child in children:
            relative = f"{prefix}{child.name}"
            is_dir = child.is_dir(follow_symlinks=False)
            if ignored(relative, is_dir, patterns):
                continue
            yield relative, Path(child.path)
            if is_dir:
                yield from walk(Path(child.path), relative + "/")

    yield from walk(root, "")


def _info(name: str, path: Path) -> tarfile.TarInfo:
    st = path.lstat()
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    executable = bool(st.st_mode & stat.S_IXUSR)
    if stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
        info.mode = 0o777
    elif stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    elif stat.S_ISREG(st.st_mode):
        info.size = st.st_size
        info.mode = 0o755 if executable else 0o644
    else:
        raise PackError(f"path: {name} is not a file, directory or symlink")
    return info


class _Hashing(io.RawIOBase):
    """A write-through file that counts and hashes what passes."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha1 = hashlib.sha1(usedforsecurity=False)
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.out.write(data)
        self.sha1.update(data)
        self.size += len(data)
        return len(data)


def pack(root: Path, into: Path) -> Packed:
    """Write ``root``'s kept entries to ``into`` (a tar.gz): its size and sha1."""
    if not root.is_dir():
        raise PackError(f"path: {root} is not a directory")
    files = 0
    with into.open("wb") as raw:
        hashing = _Hashing(raw)
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=hashing, mtime=0, compresslevel=6) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for name, path in entries(root):
                info = _info(name, path)
                if info.isreg():
                    files += 1
                    with path.open("rb") as content:
                        tar.addfile(info, content)
                else:
                    tar.addfile(info)
    if files == 0:
        raise PackError(f"path: {root} holds no file to upload (after .lbignore/.cfignore)")
    return Packed(into, hashing.size, hashing.sha1.hexdigest(), files)
