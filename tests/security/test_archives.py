"""Archive uploads cannot exhaust memory, disk or CPU, and no archive gives a 5xx (issue 13).

Each test is an upload a user (or an attacker) can send to ``POST /v3/packages/:guid/upload``,
against a real etcd and a real blob directory, and what they see: ``READY`` or a 422 and a
``FAILED`` package whose ``error`` says why, in bounded time, with a blob no larger than a few
times what the archive declares and nothing left in ``tmp/``. Before the fix: a 208-byte tar.gz
became a 426 MB blob (8 s), 19 KB of symlinks took 27 s of CPU, one PAX header of digits 14 s, a
chain of GNU long-name headers, a PAX ``mtime`` of ``nan``, a zip entry dated month 0, an empty
zip name and a negative offset were 500s, and a second upload spooled beside the first.

The archive builders here are shared with ``test_archive_fuzz.py``.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import struct
import tarfile
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lastbackend.api.state import STATE
from lastbackend.sources import archive
from lastbackend.store import keys
from tests.conftest import ClientFactory, dump
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]
BOUNDARY = "lb-test-boundary"


# building archives -------------------------------------------------------------------------------


def member(name: str, data: bytes = b"x", **pax: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    info.pax_headers = pax
    return info, data


def link(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]], *, gz: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as out:
        for info, data in members:
            out.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buffer.getvalue()
    return gzip.compress(raw, 9) if gz else raw


def gnu_long_names(count: int) -> bytes:
    """``count`` GNU long-name headers in a row before one file (tarfile recursed per header)."""
    out = b""
    for _ in range(count):
        info = tarfile.TarInfo("././@LongLink")
        info.type = tarfile.GNUTYPE_LONGNAME
        info.size = 11
        out += info.tobuf(tarfile.GNU_FORMAT)[:512] + b"xxxxxxxxxx\0".ljust(512, b"\0")
    info = tarfile.TarInfo("index.html")
    info.size = 1
    out += info.tobuf(tarfile.USTAR_FORMAT) + b"x".ljust(512, b"\0") + b"\0" * 1024
    return gzip.compress(out)


DOS_DATE = (2024 - 1980) << 9 | 5 << 5 | 1  # 2024-05-01


def raw_zip(entries: list[tuple[bytes, bytes]], *, date: int = DOS_DATE) -> bytes:
    """A stored zip written byte by byte, so names and dates can be what zipfile would refuse
    to write."""
    local = central = b""
    for name, data in entries:
        crc, size, offset = zlib.crc32(data), len(data), len(local)
        fields = (20, 0, 0, 0, date, crc, size, size, len(name), 0)
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", *fields) + name + data
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, offset) + name
    count = len(entries)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central), len(local), 0)
    return local + central + end


def deep_name(depth: int, *, first: str = "a") -> str:
    return "/".join([first, *["d"] * (depth - 1)])


def declared(upload: bytes) -> int:
    """What an upload declares it holds: its own bytes, and for a tar.gz its tar's (capped);
    for a zip its entries' sizes and a tar header each, which is what a normalized entry costs."""
    if upload[:2] == b"\x1f\x8b":
        inflate = zlib.decompressobj(31)
        with _quiet():
            return max(len(upload), len(inflate.decompress(upload, 64 << 20)))
    if upload[:2] == b"PK":
        with _quiet():
            import zipfile

            with zipfile.ZipFile(io.BytesIO(upload)) as zipped:
                infos = zipped.infolist()
                return len(upload) + sum(i.file_size + 3 * 512 for i in infos)
    return len(upload)


class _quiet:
    """Parsing a mutated archive to measure it may fail: then it declares only its bytes."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, *_: Any) -> bool:
        return kind is not None and issubclass(kind, Exception)


# the API ---------------------------------------------------------------------------------------


class Uploads:
    def __init__(self, client: Client, etcd: RawEtcd) -> None:
        self.client = client
        self.etcd = etcd
        self.app = ""

    @property
    def blob_root(self) -> Path:
        return Path(self.client.server.app[STATE].blobs.root)

    async def setup(self) -> None:
        project = await self.json("POST", "/api/projects", {"name": "sec"}, 201)
        service = await self.json("POST", f"/api/projects/{project['id']}/services", {"name": "w"})
        self.app = service["id"]

    async def json(self, method: str, path: str, body: Any = None, expect: int = 201) -> Any:
        resp = await self.client.request(method, path, json=body)
        assert resp.status == expect, await resp.text()
        return await resp.json()

    async def package(self) -> str:
        body = {"type": "bits", "relationships": {"app": {"guid": self.app}}}
        return str((await self.json("POST", "/v3/packages", body))["guid"])

    async def show(self, guid: str) -> dict[str, Any]:
        return dict(await self.json("GET", f"/v3/packages/{guid}", expect=200))

    async def send(self, guid: str, body: bytes, boundary: str = BOUNDARY) -> tuple[int, Any]:
        resp = await self.client.post(
            f"/v3/packages/{guid}/upload",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        text = await resp.text()
        return resp.status, json.loads(text) if text else None

    async def upload(self, data: bytes) -> Outcome:
        guid = await self.package()
        started = time.monotonic()
        status, body = await self.send(guid, multipart(data))
        elapsed = time.monotonic() - started
        assert status in (200, 422), (status, body)
        shown = await self.show(guid)
        blob = self.blob_root / "packages" / f"{guid}.tar"
        assert list((self.blob_root / "tmp").iterdir()) == [], "no temporary file is left"
        size = blob.stat().st_size if blob.exists() else None
        return Outcome(guid, status, body, shown, elapsed, size)


class Outcome:
    def __init__(
        self,
        guid: str,
        status: int,
        body: Any,
        shown: dict[str, Any],
        elapsed: float,
        blob: int | None,
    ) -> None:
        self.guid, self.status, self.body, self.shown = guid, status, body, shown
        self.elapsed, self.blob = elapsed, blob

    def ready(self) -> None:
        assert self.status == 200, self.body
        assert self.shown["state"] == "READY"
        assert self.blob is not None

    def failed(self, reason: str) -> None:
        assert self.status == 422, self.body
        detail = "; ".join(e["detail"] for e in self.body["errors"])
        assert detail.startswith("bits: ")
        assert reason in detail, detail
        assert self.shown["state"] == "FAILED"
        assert reason in self.shown["error"]
        assert self.blob is None, "a refused upload leaves no blob"


def multipart(data: bytes, *, name: str = "bits", head: bytes | None = None) -> bytes:
    header = (
        head
        or (
            f'Content-Disposition: form-data; name="{name}"; filename="app.bin"\r\n'
            "Content-Type: application/octet-stream\r\n"
        ).encode()
    )
    return b"--%s\r\n%s\r\n%s\r\n--%s--\r\n" % (BOUNDARY.encode(), header, data, BOUNDARY.encode())


@pytest.fixture
async def uploads(make_client: ClientFactory, tmp_path: Path, etcd: RawEtcd) -> Uploads:
    world = Uploads(await make_client(data_dir=tmp_path), etcd)
    await world.setup()
    return world


# memory and disk -------------------------------------------------------------------------------


async def test_one_deep_name_is_refused_not_a_426_mb_blob(uploads: Uploads) -> None:
    bomb = tar_of([member("a/" * 20_000 + "f")])
    assert len(bomb) < 300
    outcome = await uploads.upload(bomb)
    outcome.failed(f"has a name longer than {archive.MAX_NAME} bytes")
    assert outcome.elapsed < 5


async def test_too_deep_a_name_is_refused(uploads: Uploads) -> None:
    outcome = await uploads.upload(tar_of([member(deep_name(archive.MAX_DEPTH + 1))]))
    outcome.failed(f"is nested more than {archive.MAX_DEPTH} deep")
    long_component = "n" * (archive.MAX_COMPONENT + 1)
    outcome = await uploads.upload(tar_of([member(f"dir/{long_component}")]))
    outcome.failed(f"has a path component longer than {archive.MAX_COMPONENT} bytes")


async def test_deep_names_within_bounds_make_a_blob_the_size_of_the_archive(
    uploads: Uploads,
) -> None:
    """1,000 files each under its own 120-deep path imply 120,000 directories; the blob holds
    the 1,000 files (before, every implied directory was written: 80 times the tar)."""
    upload = tar_of([member(deep_name(120, first=f"p{i}") + "/f") for i in range(1000)])
    outcome = await uploads.upload(upload)
    outcome.ready()
    assert outcome.blob is not None
    assert outcome.blob <= 2 * declared(upload)
    with tarfile.open(uploads.blob_root / "packages" / f"{outcome.guid}.tar") as tar:
        assert len(tar.getnames()) == 1000


async def test_implied_directories_count_as_entries(
    uploads: Uploads, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "MAX_ENTRIES", 5000)
    upload = tar_of([member(deep_name(100, first=f"p{i}") + "/f") for i in range(60)])
    outcome = await uploads.upload(upload)
    outcome.failed("more than 5000 entries (counting the directories its names imply)")


async def test_a_large_pax_or_gnu_header_is_refused_before_it_is_read(uploads: Uploads) -> None:
    outcome = await uploads.upload(tar_of([member("index.html", comment="c" * (1 << 20))]))
    outcome.failed("a PAX header of 1 MiB, more than the limit of 64 KiB")
    info = tarfile.TarInfo("n" * 100_000)
    info.size = 1
    gnu = io.BytesIO()
    with tarfile.open(fileobj=gnu, mode="w", format=tarfile.GNU_FORMAT) as out:
        out.addfile(info, io.BytesIO(b"x"))
    outcome = await uploads.upload(gzip.compress(gnu.getvalue()))
    outcome.failed("a GNU header of 97.66 KiB, more than the limit of 64 KiB")


async def test_global_pax_headers_are_bounded(uploads: Uploads) -> None:
    buffer = io.BytesIO()
    many = {f"key{i}": "v" for i in range(archive.MAX_GLOBAL_KEYS + 1)}
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers=many) as t:
        info, data = member("index.html")
        t.addfile(info, io.BytesIO(data or b""))
    outcome = await uploads.upload(gzip.compress(buffer.getvalue()))
    outcome.failed(f"global PAX headers hold more than {archive.MAX_GLOBAL_KEYS} keys")


async def test_a_huge_zip_central_directory_is_refused_from_the_end_record(
    uploads: Uploads,
) -> None:
    """A 33 MiB central directory: zipfile would read it whole and make 740,000 objects."""
    fields = (20, 20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0)  # a one-byte name, no data
    record = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", *fields) + b"a"
    directory = record * ((33 << 20) // len(record))
    count = min(len(directory) // 47, 0xFFFF)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(directory), 4, 0)
    outcome = await uploads.upload(b"PK\x03\x04" + directory + end)
    outcome.failed("central directory is 33 MiB, more than the limit of 32 MiB")


# CPU -------------------------------------------------------------------------------------------


async def test_chained_symlinks_are_checked_in_bounded_time(uploads: Uploads) -> None:
    """1,000 links of 2,000 components each: 27 s of CPU before, refused within a second now."""
    bomb = tar_of([member("index.html"), *(link(f"l{i}", "a/" * 2000 + "b") for i in range(1000))])
    outcome = await uploads.upload(bomb)
    outcome.failed("the archive's symlinks take too long to check")
    assert outcome.elapsed < 5


async def test_many_ordinary_symlinks_are_fine(uploads: Uploads) -> None:
    members = [member("node_modules/pkg/bin/cli.js", b"#!/usr/bin/env node\n")]
    members += [link(f"node_modules/.bin/cli{i}", "../pkg/bin/cli.js") for i in range(5000)]
    members += [link("current", "node_modules/.bin/cli7"), link("node_modules/up", "..")]
    outcome = await uploads.upload(tar_of(members))
    outcome.ready()
    assert outcome.elapsed < 10


async def test_a_pax_header_of_digits_is_parsed_in_linear_time(uploads: Uploads) -> None:
    """tarfile's regular expression backtracks over digit runs: 14 s for this header."""
    outcome = await uploads.upload(tar_of([member("index.html", comment="1" * 64_000)]))
    outcome.ready()
    assert outcome.elapsed < 3


async def test_a_chain_of_extension_headers_is_refused(uploads: Uploads) -> None:
    """400 GNU long-name headers in a row: tarfile recursed once per header (a 500)."""
    outcome = await uploads.upload(gnu_long_names(400))
    outcome.failed(f"more than {archive.MAX_CHAIN} extension headers for one entry")


# metadata out of range: never a 5xx -------------------------------------------------------------


@pytest.mark.parametrize("mtime", ["nan", "inf", "-1e400", "1e999", "-5", "99999999999999999999"])
async def test_a_pax_mtime_out_of_range_is_taken_as_time_zero(uploads: Uploads, mtime: str) -> None:
    outcome = await uploads.upload(tar_of([member("index.html", mtime=mtime)]))
    outcome.ready()
    with tarfile.open(uploads.blob_root / "packages" / f"{outcome.guid}.tar") as tar:
        assert 0 <= tar.getmember("index.html").mtime < 8**11


async def test_a_zip_entry_dated_month_zero_is_taken_as_time_zero(uploads: Uploads) -> None:
    outcome = await uploads.upload(raw_zip([(b"index.html", b"hi")], date=(2024 - 1980) << 9))
    outcome.ready()


async def test_an_empty_zip_entry_name_fails_the_package(uploads: Uploads) -> None:
    outcome = await uploads.upload(raw_zip([(b"index.html", b"hi"), (b"", b"nameless")]))
    outcome.failed("the zip archive has an entry with an empty name")


async def test_a_zip_offset_outside_the_file_fails_the_package(uploads: Uploads) -> None:
    upload = bytearray(raw_zip([(b"index.html", b"hi")]))
    end = upload.rindex(b"PK\x05\x06")
    struct.pack_into("<L", upload, end + 16, 0x7FFFFFFF)  # the central directory's offset
    outcome = await uploads.upload(bytes(upload))
    outcome.failed("the zip archive is corrupt or truncated (an offset points before")
    upload = bytearray(raw_zip([(b"index.html", b"hi")]))
    struct.pack_into("<L", upload, upload.index(b"PK\x01\x02") + 42, 0xFFFFFF00)
    outcome = await uploads.upload(bytes(upload))
    outcome.failed("the zip archive is corrupt or truncated")


async def test_sparse_files_are_refused(uploads: Uploads) -> None:
    sparse = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "1e12"}
    outcome = await uploads.upload(tar_of([member("index.html", b"3\n", **sparse)]))
    outcome.failed("is a sparse file")


# multipart --------------------------------------------------------------------------------------


async def test_a_part_header_without_a_colon_is_a_400_naming_bits(uploads: Uploads) -> None:
    guid = await uploads.package()
    before = await dump(uploads.etcd)
    body = multipart(tar_of([member("index.html")]), head=b"Content-Disposition form-data\r\n")
    status, answer = await uploads.send(guid, body)
    assert status == 400, answer
    assert answer["errors"][0]["detail"].startswith("bits: the multipart body is malformed")
    assert await dump(uploads.etcd) == before, "nothing is written"
    assert (await uploads.show(guid))["state"] == "AWAITING_UPLOAD"


async def test_a_body_cut_off_inside_bits_fails_the_package(uploads: Uploads) -> None:
    guid = await uploads.package()
    body = multipart(tar_of([member("index.html")]))
    status, answer = await uploads.send(guid, body[: len(body) // 2])
    assert 400 <= status < 500, answer
    assert answer["errors"][0]["detail"].startswith("bits: ")
    shown = await uploads.show(guid)
    assert shown["state"] == "FAILED"
    assert shown["error"]
    assert list((uploads.blob_root / "tmp").iterdir()) == []


async def test_a_second_upload_while_the_first_is_received_is_409_at_once(
    uploads: Uploads,
) -> None:
    """The package is claimed when its bits start arriving, so the second upload neither waits
    nor spools a copy beside the first."""
    guid = await uploads.package()
    body = multipart(tar_of([member("index.html", b"<h1>one</h1>")]))
    release = asyncio.Event()

    async def slowly() -> AsyncIterator[bytes]:
        yield body[: len(body) // 2]
        await release.wait()
        yield body[len(body) // 2 :]

    url = f"/v3/packages/{guid}/upload"
    content_type = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    first = asyncio.create_task(uploads.client.post(url, data=slowly(), headers=content_type))
    try:
        for _ in range(100):
            if (await uploads.show(guid))["state"] == "PROCESSING_UPLOAD":
                break
            await asyncio.sleep(0.05)
        assert (await uploads.show(guid))["state"] == "PROCESSING_UPLOAD"
        started = time.monotonic()
        status, answer = await uploads.send(guid, multipart(tar_of([member("two.html")])))
        assert status == 409, answer
        assert "another upload of this package is being processed" in json.dumps(answer)
        assert time.monotonic() - started < 2
        assert len(list((uploads.blob_root / "tmp").iterdir())) <= 2, "one upload spools"
    finally:
        release.set()
    resp = await first
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["state"] == "READY"
    with tarfile.open(uploads.blob_root / "packages" / f"{guid}.tar") as tar:
        assert tar.getnames() == ["index.html"]
    assert keys.package_owner(guid) in await dump(uploads.etcd)


async def test_a_client_that_leaves_mid_upload_fails_the_package_and_leaves_no_file(
    uploads: Uploads,
) -> None:
    guid = await uploads.package()
    body = multipart(tar_of([member("index.html", b"x" * 100_000)], gz=False))
    reader, writer = await asyncio.open_connection("127.0.0.1", uploads.client.port)
    head = (
        f"POST /v3/packages/{guid}/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body[: len(body) // 2])
    await writer.drain()
    for _ in range(100):
        if (await uploads.show(guid))["state"] == "PROCESSING_UPLOAD":
            break
        await asyncio.sleep(0.05)
    writer.close()
    for _ in range(100):
        shown = await uploads.show(guid)
        if shown["state"] != "PROCESSING_UPLOAD":
            break
        await asyncio.sleep(0.05)
    assert shown["state"] == "FAILED"
    assert "cut off" in shown["error"]
    assert list((uploads.blob_root / "tmp").iterdir()) == []
    del reader
