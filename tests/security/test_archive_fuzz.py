"""A fuzzer of archive mutations: every upload is READY or FAILED, in bounded time (issue 13).

Seed archives (zips deflated and stored, tar.gz and plain tars in PAX and GNU formats, with
directories, long names, symlinks, hard links and global headers) are mutated the way a broken
tool or an attacker would: bits flipped, bytes set to the values parsers trip on, tokens such as
``nan``, ``-1``, ``1e999``, ``../`` or a PAX record written over or into them, slices cut,
repeated or truncated. A tar's header checksums are recomputed after mutating it, so the
mutations reach the fields behind them instead of being refused as bad checksums, and a tar.gz
is mutated before it is compressed. Names, links and directories are also generated whole.

The properties, checked for each example:

- :func:`normalize` returns or raises :class:`ArchiveError`, nothing else (through the API: a
  200 with ``READY`` or a 422 with ``FAILED``, never a 5xx), and leaves no output when it
  refuses;
- it takes under :data:`SECONDS` of CPU;
- the normalized tar is at most :data:`FACTOR` times what the archive declares, plus a tar's
  end blocks;
- a normalized tar unpacks with Python's ``data`` filter, which refuses anything leaving the
  directory: what staging unpacks cannot escape it.

Deterministic in CI: ``derandomize`` and no example database, within a small budget.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lastbackend.sources.archive import ArchiveError, normalize
from tests.security.test_archives import Uploads, declared, multipart, raw_zip, uploads

__all__ = ["uploads"]  # the fixture, used by the API property

LIMIT = 4 << 20
SECONDS = 2.0
FACTOR = 8
SLACK = 20 << 10
"""A tar's end blocks and blocking factor (10 KiB), and a little for tiny archives."""
FUZZ = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,  # time is a property of its own, measured in CPU seconds
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# seeds -----------------------------------------------------------------------------------------


def _tar(fmt: int, *, global_headers: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=fmt, pax_headers=global_headers or {}
    ) as out:

        def add(
            name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", target: str = ""
        ) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mtime, info.mode = kind, 1_700_000_000, 0o644
            info.linkname = target
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            out.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("app", tarfile.DIRTYPE)
        add("app/index.html", data=b"<h1>hello</h1>")
        add("app/" + "long-directory-name/" * 6 + "deep.txt", data=b"deep")
        add("app/current", tarfile.SYMTYPE, target="index.html")
        add("app/copy.html", tarfile.LNKTYPE, target="app/index.html")
        add("app/bin/run", data=b"#!/bin/sh\n")
    # Without the blocking factor's padding, mutations land on headers, not on zeros.
    content = buffer.getvalue().rstrip(b"\0")
    return content.ljust(-(-len(content) // 512) * 512, b"\0") + b"\0" * 1024


def _zip(method: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as out:
        out.writestr("site/", b"")
        out.writestr("site/index.html", b"<h1>hello</h1>" * 20)
        out.writestr("site/css/site.css", b"h1 { color: red }")
        info = zipfile.ZipInfo("site/link", (2024, 5, 1, 12, 0, 0))
        info.create_system, info.external_attr = 3, (0o120777 << 16)
        out.writestr(info, b"index.html")
    return buffer.getvalue()


SEEDS: dict[str, tuple[str, bytes]] = {
    "pax.tar.gz": ("gz", _tar(tarfile.PAX_FORMAT)),
    "gnu.tar": ("tar", _tar(tarfile.GNU_FORMAT)),
    "global.tar.gz": ("gz", _tar(tarfile.PAX_FORMAT, global_headers={"comment": "abc123"})),
    "deflated.zip": ("zip", _zip(zipfile.ZIP_DEFLATED)),
    "stored.zip": ("zip", _zip(zipfile.ZIP_STORED)),
    "raw.zip": ("zip", raw_zip([(b"index.html", b"hi"), (b"dir/a.txt", b"a")])),
}
TOKENS = [
    b"nan",
    b"-1",
    b"1e999",
    b"99999999999999999999",
    b"\xc2\xb2",  # a superscript two: str.isdigit() says yes, int() says no
    b"../",
    b"/",
    b"\x00",
    b"\xff\xff\xff\xff",
    b"\xc3\x28",
    b"ustar\x0000",
    b"PK\x01\x02",
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"PK\x06\x07",
    b"13 mtime=nan\n",
    b"12 size=-5\n",
    b"25 path=a/../../escape\n",
    b"27 linkpath=../../../etc\n",
    b"30 GNU.sparse.major=1\n",
    b"9 ab=cd\n",
    b"99999 x=y\n",
    b"1" * 40,
]
BYTES = [0, 1, 0x2E, 0x2F, 0x30, 0x37, 0x7F, 0x80, 0xFF]


def _fix_checksums(data: bytearray) -> None:
    """Recompute the checksum of every block that looks like a tar header."""
    for at in range(0, len(data) - 511, 512):
        block = data[at : at + 512]
        if block[257:262] != b"ustar":
            continue
        block[148:156] = b" " * 8
        data[at + 148 : at + 156] = b"%06o\0 " % sum(block)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    kind, seed = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    data = bytearray(seed)
    spots = draw(st.randoms(use_true_random=False))  # positions spread over the whole archive
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "byte", "token", "insert", "cut", "truncate", "repeat"]))
        at = spots.randrange(len(data)) if data else 0
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[at] = draw(st.sampled_from(BYTES))
        elif op == "token":
            token = draw(st.sampled_from(TOKENS))
            data[at : at + len(token)] = token
        elif op == "insert":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif op == "cut":
            del data[at : at + draw(st.integers(1, 600))]
        elif op == "truncate":
            del data[at:]
        elif op == "repeat":
            piece = data[at : at + draw(st.integers(1, 1024))]
            data[at:at] = piece * draw(st.integers(1, 40))
    if kind != "zip":
        if len(data) >= 263:
            data[257:263] = seed[257:263]  # a tar still, or the mutation tests only the sniffing
        _fix_checksums(data)
    return gzip.compress(bytes(data)) if kind == "gz" else bytes(data)


_SAFE = st.sampled_from(["a", "b", "c", "d", "e", "dir", "é", "a\\b"])
_ODD = st.sampled_from(["", ".", "..", "x" * 300, "/", "\x00"])
_LINK_PART = st.sampled_from(["a", "b", "dir", "", ".", "..", "..", ".."])


@st.composite
def generated(draw: st.DrawFn) -> bytes:
    """A tar of generated entries: names and link targets from parts that escape, repeat,
    collide, nest and point through each other; hard links mostly to earlier names."""
    kinds = [tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE]
    part = st.one_of(_SAFE, _ODD) if draw(st.integers(0, 3)) == 0 else _SAFE
    names: list[str] = []
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as out:
        for _ in range(draw(st.integers(1, 12))):
            info = tarfile.TarInfo("/".join(draw(st.lists(part, min_size=1, max_size=5))))
            info.type = draw(st.sampled_from(kinds))
            if info.type == tarfile.LNKTYPE and names and draw(st.integers(0, 3)):
                info.linkname = draw(st.sampled_from(names))
            elif info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = "/".join(draw(st.lists(_LINK_PART, min_size=1, max_size=8)))
            data = b"x" * draw(st.integers(0, 100)) if info.type == tarfile.REGTYPE else b""
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
            names.append(info.name)
    return gzip.compress(buffer.getvalue())


# the properties --------------------------------------------------------------------------------


def check(upload: bytes, tmp: Path) -> bool:
    """Normalize ``upload`` and assert the properties; whether it was accepted."""
    src, dest = tmp / "upload", tmp / "normalized.tar"
    dest.unlink(missing_ok=True)
    src.write_bytes(upload)
    started = time.process_time()
    refusal: str | None = None
    try:
        normalize(src, dest, limit=LIMIT)
    except ArchiveError as exc:
        refusal = str(exc)
    spent = time.process_time() - started
    accepted = refusal is None
    if not accepted:
        assert refusal, "a refusal says why"
        assert not dest.exists(), "a refused upload leaves no output"
    assert spent < SECONDS, f"{spent:.2f}s of CPU for {len(upload)} bytes"
    if accepted:
        size = dest.stat().st_size
        assert size <= FACTOR * declared(upload) + SLACK, (size, declared(upload))
        unpacked = tmp / "unpacked"
        with tarfile.open(dest) as tar:
            tar.extractall(unpacked, filter="data")  # raises for anything leaving the directory
        _remove(unpacked)
    return accepted


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


@FUZZ
@given(upload=mutated())
def test_mutated_archives_are_accepted_or_refused_in_bounded_time(
    upload: bytes, tmp_path: Path
) -> None:
    check(upload, tmp_path)


@FUZZ
@given(upload=generated())
def test_generated_names_and_links_never_escape(upload: bytes, tmp_path: Path) -> None:
    check(upload, tmp_path)


def test_every_seed_is_accepted(tmp_path: Path) -> None:
    """The fuzzer starts from good archives, so what it finds is the mutation's doing."""
    for kind, seed in SEEDS.values():
        assert check(gzip.compress(seed) if kind == "gz" else seed, tmp_path)


@pytest.mark.etcd
@settings(FUZZ, max_examples=40)
@given(upload=mutated())
async def test_through_the_api_every_upload_is_ready_or_failed(
    upload: bytes, uploads: Uploads
) -> None:
    guid = await uploads.package()
    status, body = await uploads.send(guid, multipart(upload))
    assert status in (200, 422), (status, body)
    shown = await uploads.show(guid)
    assert shown["state"] == ("READY" if status == 200 else "FAILED")
    assert list((uploads.blob_root / "tmp").iterdir()) == []
