"""The key tree of seed 001, spelled in one place."""

from __future__ import annotations

import pytest

from lastbackend.store import keys


def test_documented_paths() -> None:
    assert keys.project_meta("p") == "/lastbackend/projects/p/meta"
    assert keys.service_part("p", "s", "config") == "/lastbackend/projects/p/services/s/config"
    assert keys.container("p", "s", "c") == "/lastbackend/projects/p/services/s/containers/c"
    assert keys.build("p", "s", 7) == "/lastbackend/projects/p/services/s/builds/7"
    assert keys.project_name("demo") == "/lastbackend/helper/projects/demo"
    assert keys.service_name("p", "web") == "/lastbackend/helper/projects/p/services/web"
    assert keys.pod("x") == "/lastbackend/helper/pods/x"


def test_subtrees_end_with_a_slash_so_demo_never_covers_demo2() -> None:
    assert keys.project("demo") == "/lastbackend/projects/demo/"
    assert not keys.project_meta("demo2").startswith(keys.project("demo"))
    start, end = keys.project("demo").encode(), keys.prefix_end(keys.project("demo"))
    assert start < keys.project_meta("demo").encode() < end
    assert not start <= keys.project_meta("demo2").encode() < end


def test_prefix_end_works_on_bytes() -> None:
    assert keys.prefix_end("/a/") == b"/a0"
    assert keys.prefix_end("é") == b"\xc3\xaa"  # é is c3 a9: not valid UTF-8 text once bumped


def test_unknown_part_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown service part"):
        keys.service_part("p", "s", "../meta")


def test_project_name_keys_are_told_apart_from_service_indexes() -> None:
    assert keys.is_project_name_key("/lastbackend/helper/projects/demo")
    assert not keys.is_project_name_key("/lastbackend/helper/projects/p/services/web")
