"""``push``'s packing: the same directory gives the same bytes (so the same sha1 the API reports),
``.git`` and ``.lbignore``/``.cfignore`` patterns are left out."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from lastbackend.cli.manifest import ManifestError, load
from lastbackend.cli.pack import PackError, pack


def tree(root: Path) -> Path:
    (root / "css").mkdir(parents=True)
    (root / "index.html").write_text("<h1>hi</h1>")
    (root / "css" / "site.css").write_text("h1 {}")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o750)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "node_modules" / "x").mkdir(parents=True)
    (root / "node_modules" / "x" / "a.js").write_text("1")
    (root / "notes.log").write_text("debug")
    (root / ".cfignore").write_text("# CF's file\nnode_modules/\n*.log\n/css/*.map\n")
    return root


def names(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


def test_the_same_directory_packs_to_the_same_sha1(tmp_path: Path) -> None:
    root = tree(tmp_path / "app")
    first = pack(root, tmp_path / "1.tar.gz")
    for path in root.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))  # touched: same content, other mtimes
    second = pack(root, tmp_path / "2.tar.gz")
    assert first.sha1 == second.sha1
    assert (tmp_path / "1.tar.gz").read_bytes() == (tmp_path / "2.tar.gz").read_bytes()
    (root / "index.html").write_text("<h1>changed</h1>")
    assert pack(root, tmp_path / "3.tar.gz").sha1 != first.sha1


def test_git_and_ignored_patterns_are_left_out(tmp_path: Path) -> None:
    root = tree(tmp_path / "app")
    packed = pack(root, tmp_path / "a.tar.gz")
    assert names(packed.path) == [".cfignore", "css", "css/site.css", "index.html", "run.sh"]
    with tarfile.open(packed.path) as tar:
        assert tar.getmember("run.sh").mode == 0o755
        assert tar.getmember("index.html").mode == 0o644
        assert {m.mtime for m in tar.getmembers()} == {0}


def test_an_empty_or_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="is not a directory"):
        pack(tmp_path / "nowhere", tmp_path / "x.tar.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackError, match="holds no file"):
        pack(tmp_path / "empty", tmp_path / "x.tar.gz")


def test_manifest_unknown_keys_and_units(tmp_path: Path) -> None:
    path = tmp_path / "lastbackend.yml"
    path.write_text("applications:\n- name: a\n  memory: 1G\n  routes: [{route: a.example.com}]\n")
    (app,) = load(path)
    assert (app.memory, app.domains) == (1024, ("a.example.com",))
    path.write_text("applications:\n- name: a\n  stack: cflinuxfs4\n")
    with pytest.raises(ManifestError, match=r"applications\[0\]: unknown keys stack"):
        load(path)
    path.write_text("version: 1\napplications: []\n")
    with pytest.raises(ManifestError, match="unknown keys version"):
        load(path)
