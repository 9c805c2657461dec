"""Bits uploads: what is accepted and how it is normalized, and every way one is refused.

Each refusal is checked for what the user reads (the package's ``error``) and for leaving no
output file behind.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from lastbackend.sources.archive import ArchiveError, normalize, sniff

LIMIT = 1 << 20


# building uploads -------------------------------------------------------------------------------


def zip_of(entries: dict[str, bytes | None], modes: dict[str, int] | None = None) -> bytes:
    """``None`` makes a directory entry; ``modes`` sets unix modes (file type included)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, (2024, 5, 1, 12, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = (modes or {}).get(name)
            if mode is not None:
                info.create_system = 3
                info.external_attr = mode << 16
            archive.writestr(info, data or b"")
    return buffer.getvalue()


Member = tuple[str, bytes, bytes | str | None]  # (name, tar type, data or link target)


def tar_of(members: list[Member], *, compress: bool = True, mode: int = 0o644) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o755 if kind == tarfile.DIRTYPE else mode
            info.mtime = 1_700_000_000
            data = None
            if kind == tarfile.REGTYPE:
                assert isinstance(payload, bytes)
                info.size = len(payload)
                data = io.BytesIO(payload)
            elif kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                assert isinstance(payload, str)
                info.linkname = payload
            archive.addfile(info, data)
    raw = buffer.getvalue()
    return gzip.compress(raw) if compress else raw


def F(name: str, data: bytes = b"x") -> Member:
    return (name, tarfile.REGTYPE, data)


def D(name: str) -> Member:
    return (name, tarfile.DIRTYPE, None)


def L(name: str, target: str) -> Member:
    return (name, tarfile.SYMTYPE, target)


def H(name: str, target: str) -> Member:
    return (name, tarfile.LNKTYPE, target)


@pytest.fixture
def run(tmp_path: Path) -> Callable[..., tuple[Path, dict[str, tarfile.TarInfo], str]]:
    """Normalize an upload; returns (output path, entries by name, sha1 reported)."""

    def go(upload: bytes, *, limit: int = LIMIT, name: str = "upload.bin") -> tuple[Path, ...]:
        src = tmp_path / name
        src.write_bytes(upload)
        dest = tmp_path / "out.tar"
        result = normalize(src, dest, limit=limit)
        with tarfile.open(dest) as out:
            entries = {m.name: m for m in out.getmembers()}
        assert result.sha1 == hashlib.sha1(upload).hexdigest()
        return dest, entries, result  # type: ignore[return-value]

    return go  # type: ignore[return-value]


def refused(tmp_path: Path, upload: bytes, *, limit: int = LIMIT) -> str:
    src = tmp_path / "upload"
    src.write_bytes(upload)
    dest = tmp_path / "out.tar"
    with pytest.raises(ArchiveError) as caught:
        normalize(src, dest, limit=limit)
    assert not dest.exists(), "a refused upload leaves no output"
    return str(caught.value)


def read(dest: Path, name: str) -> bytes:
    with tarfile.open(dest) as out:
        f = out.extractfile(name)
        assert f is not None
        return f.read()


# accepted ----------------------------------------------------------------------------------------


def test_zip_with_directories(run, tmp_path: Path) -> None:
    upload = zip_of(
        {
            "css/": None,
            "css/site.css": b"h1 {}",
            "index.html": b"<h1>hi</h1>",
            "bin/run": b"#!/bin/sh\n",
            "deep/er/file.txt": b"no directory entries for these",
        },
        modes={"bin/run": stat.S_IFREG | 0o755, "css/": stat.S_IFDIR | 0o700},
    )
    dest, entries, result = run(upload)
    # What the archive holds, no more: the parents a name implies are made by the unpacker.
    assert set(entries) == {"css", "css/site.css", "index.html", "bin/run", "deep/er/file.txt"}
    assert entries["css"].isdir()
    with tarfile.open(dest) as out:
        out.extractall(tmp_path / "unpacked", filter="data")
    unpacked = tmp_path / "unpacked/deep/er/file.txt"
    assert unpacked.read_bytes() == b"no directory entries for these"
    assert entries["bin/run"].mode == 0o755, "the executable bit survives"
    assert entries["index.html"].mode == 0o644
    assert entries["css"].mode == 0o755
    assert all(e.uid == 0 and e.gid == 0 and e.uname == "" for e in entries.values())
    assert read(dest, "css/site.css") == b"h1 {}"
    assert result.files == 4
    assert result.size == len(b"h1 {}<h1>hi</h1>#!/bin/sh\nno directory entries for these")


def test_tar_gz_with_symlinks_inside_the_directory(run) -> None:
    upload = tar_of(
        [
            D("./"),
            D("./public"),
            F("./public/index.html", b"page"),
            L("./public/home.html", "index.html"),
            L("./current", "public"),
            L("./public/up", "../public/index.html"),
            H("./public/copy.html", "./public/index.html"),
        ]
    )
    dest, entries, _ = run(upload)
    assert entries["public/home.html"].issym()
    assert entries["public/home.html"].linkname == "index.html"
    assert entries["current"].linkname == "public"
    assert entries["public/copy.html"].islnk()
    assert entries["public/copy.html"].linkname == "public/index.html"
    assert read(dest, "public/index.html") == b"page"
    assert "" not in entries
    assert "." not in entries
    assert "./" not in entries


def test_a_single_top_level_directory_is_kept(run) -> None:
    _, zipped, _ = run(zip_of({"myapp/index.html": b"a", "myapp/Procfile": b"web: x"}))
    assert set(zipped) == {"myapp/index.html", "myapp/Procfile"}
    _, tarred, _ = run(tar_of([D("myapp"), F("myapp/index.html")]))
    assert set(tarred) == {"myapp", "myapp/index.html"}


def test_plain_tar_and_detection_by_content_not_name(run) -> None:
    _, entries, _ = run(tar_of([F("a.txt")], compress=False), name="app.zip")
    assert set(entries) == {"a.txt"}
    _, entries, _ = run(zip_of({"b.txt": b"b"}), name="app.tar.gz")
    assert set(entries) == {"b.txt"}


def test_sniff() -> None:
    assert sniff(zip_of({"a": b"a"})[:512]) == "zip"
    assert sniff(tar_of([F("a")])[:512]) == "gzip"
    assert sniff(tar_of([F("a")], compress=False)[:512]) == "tar"
    assert sniff(b"hello world") is None


def test_at_the_limit_is_accepted(run) -> None:
    _, _, result = run(zip_of({"a": b"x" * 1000}), limit=1024 * 1024)
    assert result.size == 1000


# refused -----------------------------------------------------------------------------------------


def test_not_an_archive(tmp_path: Path) -> None:
    assert "not a zip or tar.gz archive" in refused(tmp_path, b"just some text\n" * 100)
    message = refused(tmp_path, bz2.compress(b"x" * 1000))
    assert "not a zip or tar.gz" in message
    assert "bzip2" in message
    assert "not a zip or tar.gz" in refused(tmp_path, b"")


def test_gzip_that_is_not_a_tar(tmp_path: Path) -> None:
    message = refused(tmp_path, gzip.compress(b"plain text, not a tar" * 50))
    assert "does not hold a tar archive" in message


def test_corrupt_and_truncated(tmp_path: Path) -> None:
    good = tar_of([F("a", b"y" * 5000), F("b", b"z" * 5000)])
    assert "corrupt" in refused(tmp_path, good[: len(good) // 2])
    raw = tar_of([F("a", b"y" * 5000)], compress=False)
    assert "truncated" in refused(tmp_path, raw[: 1024 + 100])
    assert "truncated" in refused(tmp_path, raw[: 1536 + 100])
    zipped = zip_of({"a": b"q" * 5000})
    broken = zipped[:40] + bytes(b ^ 0xFF for b in zipped[40:80]) + zipped[80:]
    assert "corrupt" in refused(tmp_path, broken)


def test_too_large_upload(tmp_path: Path) -> None:
    import os

    message = refused(tmp_path, zip_of({"a": os.urandom(4000)}), limit=2048)
    assert message == "the upload is larger than the limit of 2 KiB"


def test_zip_bomb(tmp_path: Path) -> None:
    bomb = zip_of({"zeros": b"\0" * (4 * LIMIT)})
    assert len(bomb) < LIMIT
    assert "unpacks to more than the limit of 1 MiB" in refused(tmp_path, bomb)


def test_tar_gz_bomb(tmp_path: Path) -> None:
    bomb = tar_of([F("zeros", b"\0" * (2 * LIMIT)), F("more", b"\0" * LIMIT)])
    assert len(bomb) < LIMIT
    assert "unpacks to more than the limit" in refused(tmp_path, bomb)


def test_bomb_spread_over_many_files(tmp_path: Path) -> None:
    bomb = zip_of({f"f{i}": b"\0" * (LIMIT // 8) for i in range(10)})
    assert "unpacks to more than the limit" in refused(tmp_path, bomb)


@pytest.mark.parametrize(
    "members",
    [
        [F("/etc/passwd")],
        [F("ok"), F("../evil")],
        [F("a/../../evil")],
        [D("app"), F("app/../../outside")],
    ],
    ids=["absolute", "dotdot", "nested-dotdot", "dir-dotdot"],
)
def test_names_escaping_the_directory(tmp_path: Path, members: list[Member]) -> None:
    message = refused(tmp_path, tar_of(members))
    assert "escapes the app directory" in message


def test_zip_names_escaping_the_directory(tmp_path: Path) -> None:
    assert "absolute path" in refused(tmp_path, zip_of({"/abs.txt": b"a"}))
    assert "'..'" in refused(tmp_path, zip_of({"ok.txt": b"a", "../up.txt": b"b"}))
    assert "'..'" in refused(tmp_path, zip_of({"a\\..\\..\\win.txt": b"b"}))


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ([F("a"), L("link", "/etc/passwd")], "absolute path"),
        ([F("a"), L("link", "..")], "points outside"),
        ([D("sub"), F("sub/a"), L("sub/link", "../../etc")], "points outside"),
        # Each link alone stays inside; followed through each other they leave.
        (
            [D("sub"), D("sub/deep"), F("sub/a"), L("sub/up", ".."), L("sub/deep/x", "../up/..")],
            "points outside",
        ),
        ([F("a"), L("loop1", "loop2"), L("loop2", "loop1")], "loop"),
        ([F("a"), L("pointer", "sub"), L("sub", "/")], "points outside"),
    ],
    ids=["absolute", "parent", "deep-parent", "through-links", "loop", "to-absolute-link"],
)
def test_symlinks_pointing_outside(tmp_path: Path, members: list[Member], expected: str) -> None:
    message = refused(tmp_path, tar_of(members))
    assert "symlink" in message
    assert expected in message


def test_zip_symlink_pointing_outside(tmp_path: Path) -> None:
    upload = zip_of({"a": b"a", "link": b"../../etc/shadow"}, modes={"link": stat.S_IFLNK | 0o777})
    assert "the symlink 'link' points outside the app directory" in refused(tmp_path, upload)


def test_writing_through_a_symlink(tmp_path: Path) -> None:
    upload = tar_of([D("real"), L("alias", "real"), F("alias/file")])
    assert "goes through the symlink 'alias'" in refused(tmp_path, upload)


@pytest.mark.parametrize("target", ["../outside", "/etc/passwd", "missing", "dir"])
def test_hard_links_outside_or_to_nothing(tmp_path: Path, target: str) -> None:
    upload = tar_of([D("dir"), F("a"), H("b", target)])
    assert "hard link 'b' points outside the app directory" in refused(tmp_path, upload)


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        (tarfile.CHRTYPE, "a device file"),
        (tarfile.BLKTYPE, "a device file"),
        (tarfile.FIFOTYPE, "a fifo"),
    ],
)
def test_special_files(tmp_path: Path, kind: bytes, what: str) -> None:
    upload = tar_of([F("a"), ("dev/thing", kind, None)])
    assert f"'dev/thing' is {what}" in refused(tmp_path, upload)


def test_zip_special_files(tmp_path: Path) -> None:
    upload = zip_of({"a": b"a", "null": b""}, modes={"null": stat.S_IFCHR | 0o666})
    assert "'null' is a device file" in refused(tmp_path, upload)
    upload = zip_of({"a": b"a", "pipe": b""}, modes={"pipe": stat.S_IFIFO | 0o666})
    assert "'pipe' is a fifo" in refused(tmp_path, upload)


def test_empty_archives(tmp_path: Path) -> None:
    assert refused(tmp_path, zip_of({})) == "the archive holds no files"
    assert refused(tmp_path, zip_of({"a/": None, "a/b/": None})) == "the archive holds no files"
    assert refused(tmp_path, tar_of([D("only-dirs")])) == "the archive holds no files"
    assert refused(tmp_path, tar_of([L("dangling", "nowhere")])) == "the archive holds no files"


def test_duplicates_and_conflicts(tmp_path: Path) -> None:
    assert "'a' is in the archive twice" in refused(tmp_path, tar_of([F("a"), F("a")]))
    assert "both a file and a directory" in refused(tmp_path, tar_of([F("a"), F("a/b")]))
    assert "both a file and a directory" in refused(tmp_path, tar_of([D("a"), F("a")]))


def test_encrypted_zip(tmp_path: Path) -> None:
    # zipfile cannot encrypt: set the "encrypted" flag in the local and central headers.
    raw = bytearray(zip_of({"secret.txt": b"not really encrypted"}))
    raw[6] |= 0x1
    raw[raw.index(b"PK\x01\x02") + 8] |= 0x1
    assert "'secret.txt' is encrypted" in refused(tmp_path, bytes(raw))


# bounds (issue 13) -------------------------------------------------------------------------------


def test_names_at_the_bounds_are_accepted(run) -> None:
    from lastbackend.sources import archive

    longest = "/".join(["d" * 254] * 4)[: archive.MAX_NAME]
    deepest = "/".join(["d"] * archive.MAX_DEPTH)
    widest = "w" * archive.MAX_COMPONENT
    _, entries, _ = run(tar_of([F(longest), F(deepest + "x"), F(widest)]))
    assert set(entries) == {longest, deepest + "x", widest}


def test_an_implied_directory_given_later_is_written_once(run) -> None:
    _, entries, _ = run(tar_of([F("a/b/c"), D("a/b"), D("a/b"), D("a")]))
    assert sorted(entries) == ["a", "a/b", "a/b/c"]
    assert entries["a/b"].isdir()


def test_a_hard_link_to_an_implied_directory_is_refused(tmp_path: Path) -> None:
    upload = tar_of([F("dir/file"), H("link", "dir")])
    assert "hard link 'link' points outside the app directory" in refused(tmp_path, upload)


def test_a_malformed_pax_record_is_refused(tmp_path: Path) -> None:
    raw = bytearray(tar_of([F("a" * 150)], compress=False))  # the long name is a PAX record
    at = raw.index(b" path=")
    raw[at - 3 : at] = b"999"  # the record's length now runs past the header
    header = raw[:512]
    header[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(header)
    assert "malformed PAX header" in refused(tmp_path, bytes(raw))


def _zip64_end(upload: bytes, directory_size: int | None = None) -> bytes:
    """``upload`` with a zip64 end record and locator before its end record, whose fields are
    then 0xFFFF.. as a zip64 writer leaves them."""
    import struct

    end = upload.rindex(b"PK\x05\x06")
    count, size, offset = struct.unpack_from("<HLL", upload, end + 10)
    size = directory_size if directory_size is not None else size
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
    tail = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return upload[:end] + record + locator + tail


def test_the_zip64_end_record_is_where_the_directory_size_is_read(run, tmp_path: Path) -> None:
    plain = zip_of({"index.html": b"hi"})
    _, entries, _ = run(_zip64_end(plain))
    assert set(entries) == {"index.html"}
    message = refused(tmp_path, _zip64_end(plain, directory_size=1 << 40))
    assert "central directory is 1024 GiB, more than the limit of 32 MiB" in message


def test_zip_entries_are_counted_before_zipfile_parses_them(tmp_path: Path) -> None:
    """250,000 central directory records: counted from their fixed headers and refused before
    zipfile makes an object for any (those took 3.3 s and 87 MiB; the count takes 0.3 s)."""
    import struct
    import time

    fields = (20, 20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0)
    record = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", *fields) + b"a"
    directory = record * 250_000
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, len(directory), 4, 0)
    started = time.process_time()
    message = refused(tmp_path, b"PK\x03\x04" + directory + end, limit=64 << 20)
    assert message == "the archive holds more than 200000 entries"
    assert time.process_time() - started < 1.5


def test_symlink_resolution_work_is_bounded_for_the_whole_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lastbackend.sources import archive

    monkeypatch.setattr(archive, "MAX_RESOLVE_STEPS", 1000)
    links = [L(f"l{i}", "a/" * 100 + "b") for i in range(20)]  # 20 x 101 steps
    message = refused(tmp_path, tar_of([F("index.html"), *links]))
    assert "symlinks take too long to check (more than 1000 path steps, at 'l9')" in message
