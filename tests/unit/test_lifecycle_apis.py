"""API version semantics of document 002: what each entry of a descriptor list means."""

from __future__ import annotations

import re

import pytest

from lastbackend.lifecycle.apis import (
    Apis,
    ApiVersionError,
    Entry,
    Version,
    compare,
    parse_entry,
    parse_version,
)


@pytest.mark.parametrize(
    ("entry", "version", "covered"),
    [
        # for 1.0+, x.n means [x.0, x.n]
        ("1.2", "1.0", True),
        ("1.2", "1.1", True),
        ("1.2", "1.2", True),
        ("1.2", "1.3", False),
        ("1.2", "2.0", False),
        ("2.1", "1.9", False),
        # a bare major means every x.y
        ("1", "1.0", True),
        ("1", "1.99", True),
        ("1", "2.0", False),
        ("1", "0.1", False),
        # 0.x only itself
        ("0.4", "0.4", True),
        ("0.4", "0.3", False),
        ("0.4", "0.5", False),
        ("0.5", "0.4", False),
    ],
)
def test_entry_covers(entry: str, version: str, covered: bool) -> None:
    assert parse_entry(entry).covers(parse_version(version)) is covered


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.4", Entry(0, 4)), ("1", Entry(1, None)), ("12.30", Entry(12, 30)), (" 1.2 ", Entry(1, 2))],
)
def test_parse_entry(text: str, expected: Entry) -> None:
    assert parse_entry(text) == expected
    assert str(expected) == text.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x", "not an API version"),
        ("1.2.3", "not an API version"),
        ("v1.2", "not an API version"),
        ("01.2", "not an API version"),
        ("1.", "not an API version"),
        ("", "not an API version"),
        ("0", "name them one by one"),
        (1.2, "quote it in TOML"),
        (1, "is a string"),
    ],
)
def test_malformed_entries_are_refused(text: object, message: str) -> None:
    with pytest.raises(ApiVersionError, match=re.escape(message)):
        parse_entry(text)


def test_a_bare_major_version_is_its_dot_zero() -> None:
    assert parse_version("1") == Version(1, 0)
    assert parse_version("0.5") == Version(0, 5)


def test_versions_order_numerically() -> None:
    assert Version(1, 10) > Version(1, 9) > Version(0, 12)
    assert compare("1.10", "1.9") == 1
    assert compare("0.4", "0.4") == 0
    assert compare("0.4", "1") == -1
    assert sorted(map(parse_version, ["1.10", "0.5", "1.2", "0.10"])) == [
        Version(0, 5),
        Version(0, 10),
        Version(1, 2),
        Version(1, 10),
    ]


def strs(versions: list[Version]) -> list[str]:
    return [str(v) for v in versions]


def test_expansion_of_the_document_example() -> None:
    buildpack = Apis.parse(["1.2", "2.1"], ["1"])
    platform = Apis.parse(["0.4", "0.5", "1.3"], ["0.4"])
    assert strs(buildpack.expanded_supported()) == ["1.0", "1.1", "1.2", "2.0", "2.1"]
    assert strs(buildpack.expanded_deprecated()) == ["1.0", "1.1", "1.2"]
    assert strs(platform.expanded_supported()) == ["0.4", "0.5", "1.0", "1.1", "1.2", "1.3"]
    assert strs(platform.expanded_deprecated()) == ["0.4"]
    assert str(buildpack.earliest()) == "1.2"
    assert str(platform.earliest()) == "0.4"
    assert str(platform.latest()) == "1.3"


def test_expansion_dedupes_and_sorts() -> None:
    apis = Apis.parse(["1.3", "0.5", "1.1", "0.5"])
    assert strs(apis.expanded_supported()) == ["0.5", "1.0", "1.1", "1.2", "1.3"]
    assert apis.expanded_deprecated() == []


@pytest.mark.parametrize(
    ("version", "supported", "deprecated"),
    [
        ("1.0", True, True),
        ("1.2", True, True),
        ("1", True, True),  # 1.0
        ("1.3", False, False),  # past the newest 1.x: neither
        ("2.0", True, False),
        ("2.1", True, False),
        ("2.2", False, False),
        ("3.0", False, False),
        ("0.9", False, False),
    ],
)
def test_is_supported_and_deprecated(version: str, supported: bool, deprecated: bool) -> None:
    apis = Apis.parse(["1.2", "2.1"], ["1"])
    assert apis.is_supported(version) is supported
    assert apis.is_deprecated(version) is deprecated
    assert apis.is_supported(parse_version(version)) is supported


@pytest.mark.parametrize(
    ("supported", "deprecated", "message"),
    [
        ([], [], "supported: must name at least one API version"),
        (["1"], [], "supported: '1': a bare major has no upper bound"),
        (["1.2"], ["1.2"], "deprecated: '1.2': only 0.x versions or a bare major"),
        (["1.2"], ["1.0"], "deprecated: '1.0': only 0.x versions or a bare major"),
        (["0.5"], ["0.4"], "deprecated: '0.4' is not supported"),
        (["1.2"], ["2"], "deprecated: '2' is not supported"),
        (["1.2", "x"], [], "supported: 'x': not an API version"),
        (["1.2"], ["y"], "deprecated: 'y': not an API version"),
        (["1.2"], ["0"], "deprecated: '0': 0.x APIs are each their own API"),
    ],
)
def test_bad_lists_are_refused(supported: list[str], deprecated: list[str], message: str) -> None:
    with pytest.raises(ApiVersionError, match=re.escape(message)):
        Apis.parse(supported, deprecated)
