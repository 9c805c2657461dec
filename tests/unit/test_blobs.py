"""The blob store on a real directory: layout, atomic replacement, logs, listing, sweeping."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lastbackend.sources.blobs import BlobMissing, BlobStore

A = "0b3a2f2e-8f5e-4a4b-9a55-5d0b7f7a1c11"
B = "1c4b3e3f-9a6f-4b5c-8b66-6e1c8a8b2d22"


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_layout(blobs: BlobStore) -> None:
    assert blobs.package_path(A) == blobs.root / "packages" / f"{A}.tar"
    assert blobs.log_path(A) == blobs.root / "droplets" / f"{A}.log"


@pytest.mark.parametrize("name", ["../../etc/passwd", "x", "", f"{A}/x", A.upper()])
def test_names_must_be_uuids(blobs: BlobStore, name: str) -> None:
    with pytest.raises(ValueError, match="UUID"):
        blobs.path("packages", name)


def test_unknown_kind(blobs: BlobStore) -> None:
    with pytest.raises(ValueError, match="unknown blob kind"):
        blobs.path("builds", A)


def test_write_read_replace_delete(blobs: BlobStore) -> None:
    assert not blobs.exists("packages", A)
    with pytest.raises(BlobMissing):
        blobs.read_package(A)
    blobs.write("packages", A, b"first")
    blobs.write("packages", A, b"second")
    assert blobs.read_package(A) == b"second"
    with blobs.open("packages", A) as f:
        assert f.read() == b"second"
    assert blobs.exists("packages", A)
    assert list((blobs.root / "tmp").iterdir()) == [], "no temporary file is left"
    assert blobs.delete("packages", A) is True
    assert blobs.delete("packages", A) is False, "deleting twice is not an error"
    assert not blobs.exists("packages", A)


def test_a_cache_blob_is_replaced_without_fsync(
    blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs.write("caches", A, b"old layers")
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    blobs.write("caches", A, b"new layers", durable=False)
    assert blobs.read("caches", A) == b"new layers"
    assert synced == []  # a lost cache costs a cold build, not the seconds of an fsync
    assert sorted(p.name for p in blobs.root.rglob("*") if p.is_file()) == [f"{A}.tar"]


def test_put_file_moves_a_temporary_file_into_place(blobs: BlobStore) -> None:
    tmp = blobs.temp_path("upload")
    assert tmp.parent == blobs.root / "tmp"
    assert tmp != blobs.temp_path("upload"), "each call names a fresh file"
    tmp.write_bytes(b"normalized tar")
    blobs.put_file("packages", A, tmp)
    assert not tmp.exists()
    assert blobs.read_package(A) == b"normalized tar"


def test_listing_by_kind(blobs: BlobStore) -> None:
    assert blobs.names("packages") == []
    blobs.write("packages", B, b"b")
    blobs.write("packages", A, b"a")
    blobs.append_log(B, "x")
    (blobs.root / "packages" / "stray.txt").write_text("not a blob")
    (blobs.root / "packages" / f"{A}.log").write_text("wrong suffix")
    assert blobs.names("packages") == [A, B]
    assert blobs.names("droplets") == [B]
    entries = blobs.entries("packages")
    assert set(entries) == {A, B}
    assert all(abs(mtime - time.time()) < 60 for mtime in entries.values())


def test_logs_append_lines_and_read_from_an_offset(blobs: BlobStore) -> None:
    assert blobs.read_log(A) == (b"", 0), "no log yet reads as empty"
    blobs.append_log(A, "-----> Detecting")
    blobs.append_log(A, b"line two\n")
    blobs.append_log(A, "")
    whole, offset = blobs.read_log(A)
    assert whole == b"-----> Detecting\nline two\n\n"
    assert offset == len(whole)
    assert blobs.read_log(A, offset) == (b"", offset)
    blobs.append_log(A, "more")
    assert blobs.read_log(A, offset) == (b"more\n", offset + 5)
    assert blobs.read_log(A, 0, limit=6) == (b"----->", 6)


def test_a_log_past_its_limit_is_cut_once_and_takes_nothing_more(blobs: BlobStore) -> None:
    """The cut is for good: a short line after the long one that was cut would still fit under
    the limit, and is dropped all the same (issue 13, section 5)."""
    assert blobs.append_log(A, "first", limit=1024)
    assert not blobs.append_log(A, "x" * 2000, limit=1024)
    assert not blobs.append_log(A, "short", limit=1024)
    assert not blobs.append_log(A, "x" * 2000, limit=1024)
    text = blobs.read_log(A)[0].decode()
    assert text == (
        "first\n-----> log cut at 6 bytes: staging.max_log_bytes is 1024 bytes; "
        "later output is dropped\n"
    )
    name = f"{B}-7"
    for n in range(200):
        blobs.append_log(name, f"Step {n}", kind="build-logs", limit=1024)
    log = blobs.read_log(name, kind="build-logs")[0]
    body, cut, _ = log.partition(b"-----> log cut at ")
    assert cut
    assert len(body) <= 1024
    assert b"builds.max_log_bytes is 1024" in log
    assert blobs.append_log(B, "y" * 5000), "no limit: appended whole"


def test_sweep_temps_removes_only_old_files(blobs: BlobStore) -> None:
    old, fresh = blobs.temp_path("old"), blobs.temp_path("fresh")
    old.write_bytes(b"cut off by a crash")
    fresh.write_bytes(b"being received")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    assert blobs.sweep_temps(older_than=600) == [old]
    assert not old.exists()
    assert fresh.exists()
    assert BlobStore(blobs.root / "nowhere").sweep_temps(1) == []
