"""The lifecycle descriptor file, its labels, deprecation modes and the check (document 002)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lastbackend import config
from lastbackend.lifecycle import descriptor as lc
from lastbackend.lifecycle.descriptor import Descriptor, DescriptorError, Result
from tests.conftest import REPO

DOCUMENT = """
[apis]
[apis.buildpack]
  deprecated = ["1"]
  supported = ["1.2", "2.1"]
[apis.platform]
  deprecated = ["0.4"]
  supported = ["0.4", "0.5", "1.3"]

[lifecycle]
  version = "0.9.0"
"""
"""The example of document 002, verbatim."""


@pytest.fixture
def doc() -> Descriptor:
    return lc.loads(DOCUMENT)


def test_the_document_example_gives_exactly_its_lists(doc: Descriptor) -> None:
    view = lc.view(doc)
    assert view["expanded"] == {
        "buildpack": {
            "deprecated": ["1.0", "1.1", "1.2"],
            "supported": ["1.0", "1.1", "1.2", "2.0", "2.1"],
        },
        "platform": {
            "deprecated": ["0.4"],
            "supported": ["0.4", "0.5", "1.0", "1.1", "1.2", "1.3"],
        },
    }
    assert view["apis"] == {
        "buildpack": {"deprecated": ["1"], "supported": ["1.2", "2.1"]},
        "platform": {"deprecated": ["0.4"], "supported": ["0.4", "0.5", "1.3"]},
    }
    assert view["lifecycle"] == {"version": "0.9.0"}
    assert doc.is_supported("buildpack", "2.0")
    assert doc.is_deprecated("buildpack", "1.1")
    assert not doc.is_deprecated("platform", "0.5")
    assert not doc.is_supported("platform", "0.3")


def test_labels(doc: Descriptor) -> None:
    labels = lc.labels(doc)
    assert set(labels) == {
        "io.buildpacks.lifecycle.version",
        "io.buildpacks.lifecycle.apis",
        "io.buildpacks.builder.metadata",
    }
    assert labels["io.buildpacks.lifecycle.version"] == "0.9.0"
    assert json.loads(labels["io.buildpacks.lifecycle.apis"]) == {
        "buildpack": {"deprecated": ["1"], "supported": ["1.2", "2.1"]},
        "platform": {"deprecated": ["0.4"], "supported": ["0.4", "0.5", "1.3"]},
    }
    assert json.loads(labels["io.buildpacks.builder.metadata"]) == {
        "lifecycle": {"version": "0.9.0", "api": {"buildpack": "1.2", "platform": "0.4"}}
    }
    assert lc.view(doc)["labels"] == labels


def test_builder_metadata_keeps_the_builders_own_fields(doc: Descriptor) -> None:
    metadata = {"buildpacks": [{"id": "static"}], "stack": {"runImage": {"image": "run"}}}
    label = json.loads(lc.labels(doc, metadata)["io.buildpacks.builder.metadata"])
    assert label["buildpacks"] == [{"id": "static"}]
    assert label["stack"] == {"runImage": {"image": "run"}}
    assert label["lifecycle"]["api"] == {"buildpack": "1.2", "platform": "0.4"}


def test_the_shipped_descriptor_is_the_packaged_one_and_declares_the_engines_apis() -> None:
    shipped = REPO / "configs" / "lifecycle.toml"
    assert lc.default_path().read_bytes() == shipped.read_bytes(), (
        "lastbackend/lifecycle/lifecycle.toml is the installed copy of configs/lifecycle.toml"
    )
    loaded = lc.load()
    assert loaded.source == str(lc.default_path())
    # not the document's example (a test fixture here): what the staging engine implements
    assert lc.view(loaded) != lc.view(lc.loads(DOCUMENT))
    assert lc.apis_label(loaded)["buildpack"] == {
        "deprecated": [],
        "supported": ["0.7", "0.8", "0.9", "0.10", "0.11", "0.12"],
    }


def test_a_missing_file_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(DescriptorError, match=re.escape(str(tmp_path / "nope.toml"))):
        lc.load(tmp_path / "nope.toml")


BAD = [
    # (what, file text, message)
    ("not toml", "[apis\n", "not valid TOML"),
    (
        "supported not a superset",
        DOCUMENT.replace('deprecated = ["0.4"]', 'deprecated = ["0.3"]'),
        "apis.platform.deprecated: '0.3' is not supported",
    ),
    (
        "deprecated minor of 1.x",
        DOCUMENT.replace('deprecated = ["1"]', 'deprecated = ["1.2"]'),
        "apis.buildpack.deprecated: '1.2': only 0.x versions or a bare major",
    ),
    (
        "malformed version",
        DOCUMENT.replace('"0.5"', '"x"'),
        "apis.platform.supported: 'x': not an API version",
    ),
    (
        "unquoted version",
        DOCUMENT.replace('"0.5"', "0.5"),
        "apis.platform.supported: 0.5: an API version is a string",
    ),
    (
        "bare major supported",
        DOCUMENT.replace('"2.1"', '"2"'),
        "apis.buildpack.supported: '2': a bare major has no upper bound",
    ),
    ("empty supported", DOCUMENT.replace('["1.2", "2.1"]', "[]"), "at least one"),
    (
        "supported not an array",
        DOCUMENT.replace('["1.2", "2.1"]', '"1.2"'),
        "apis.buildpack.supported: must be an array of strings",
    ),
    ("missing [apis]", '[lifecycle]\nversion = "0.9.0"\n', "[apis] missing"),
    ("missing [lifecycle]", DOCUMENT.split("[lifecycle]")[0], "[lifecycle] missing"),
    (
        "missing platform table",
        '[apis.buildpack]\nsupported = ["1.2"]\n[lifecycle]\nversion = "1"\n',
        "[apis.platform] missing",
    ),
    (
        "missing supported",
        DOCUMENT.replace('  supported = ["0.4", "0.5", "1.3"]\n', ""),
        "apis.platform.supported: missing",
    ),
    ("missing version", DOCUMENT.replace('version = "0.9.0"', ""), "lifecycle.version: must be"),
    ("empty version", DOCUMENT.replace('"0.9.0"', '""'), "lifecycle.version: must be"),
    ("unknown top-level key", DOCUMENT + "\n[stack]\n", "unknown key stack"),
    (
        "unknown apis key",
        DOCUMENT.replace("[apis.platform]", "[apis.platfrom]"),
        "unknown key apis.platfrom",
    ),
    (
        "unknown list key",
        DOCUMENT.replace('supported = ["1.2"', 'suported = ["1.2"'),
        "unknown key apis.buildpack.suported",
    ),
    ("unknown lifecycle key", DOCUMENT + 'api = "0.2"\n', "unknown key lifecycle.api"),
]


@pytest.mark.parametrize(("text", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_files_are_refused_naming_file_key_and_value(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "lifecycle.toml"
    path.write_text(text)
    with pytest.raises(DescriptorError) as caught:
        lc.load(path)
    assert str(caught.value).startswith(f"{path}: "), caught.value
    assert message in str(caught.value)


# --- deprecation modes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "platform", "buildpack"),
    [
        ({}, "warn", "warn"),
        ({"CNB_PLATFORM_DEPRECATION_MODE": "error"}, "error", "warn"),
        ({"CNB_BUILDPACK_DEPRECATION_MODE": "silent"}, "warn", "silent"),
        ({"CNB_DEPRECATION_MODE": "quiet"}, "silent", "silent"),
        ({"CNB_DEPRECATION_MODE": "error"}, "error", "error"),
        ({"CNB_DEPRECATION_MODE": "silent"}, "silent", "silent"),
        (
            {"CNB_DEPRECATION_MODE": "error", "CNB_PLATFORM_DEPRECATION_MODE": "warn"},
            "warn",
            "error",
        ),
        ({"CNB_PLATFORM_DEPRECATION_MODE": "ERROR"}, "error", "warn"),
        ({"CNB_PLATFORM_DEPRECATION_MODE": ""}, "warn", "warn"),
    ],
)
def test_deprecation_mode(environ: dict[str, str], platform: str, buildpack: str) -> None:
    assert lc.deprecation_mode("platform", environ) == platform
    assert lc.deprecation_mode("buildpack", environ) == buildpack


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CNB_PLATFORM_DEPRECATION_MODE": "quiet"}, "CNB_PLATFORM_DEPRECATION_MODE: must be"),
        ({"CNB_DEPRECATION_MODE": "loud"}, "CNB_DEPRECATION_MODE: must be warn, error or silent"),
    ],
)
def test_unknown_modes_are_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        lc.deprecation_mode("platform", environ)


# --- the check --------------------------------------------------------------------------------

WARN_PLATFORM = "platform API 0.4 is deprecated by lifecycle 0.9.0; move to a newer one"
WARN_BUILDPACK = "buildpack API 1.1 is deprecated by lifecycle 0.9.0; move to a newer one"


@pytest.mark.parametrize(
    ("platform", "buildpack", "environ", "code", "warnings", "error"),
    [
        ("1.3", "2.1", {}, 0, [], None),
        ("1.0", "2.0", {}, 0, [], None),
        ("0.5", None, {}, 0, [], None),
        (None, "2.1", {}, 0, [], None),
        # unsupported
        ("0.3", "2.1", {}, 11, [], "platform API 0.3 is not supported by lifecycle 0.9.0"),
        ("1.4", "2.1", {}, 11, [], "platform API 1.4 is not supported"),
        ("x", "2.1", {}, 11, [], "platform API 'x': not an API version"),
        ("1.3", "2.2", {}, 12, [], "buildpack API 2.2 is not supported"),
        ("1.3", "0.9", {}, 12, [], "buildpack API 0.9 is not supported"),
        ("0.3", "9.9", {}, 11, [], "platform API 0.3"),  # platform first
        # deprecated, by mode
        ("0.4", "1.1", {}, 0, [WARN_PLATFORM, WARN_BUILDPACK], None),
        ("0.4", "2.1", {"CNB_PLATFORM_DEPRECATION_MODE": "warn"}, 0, [WARN_PLATFORM], None),
        ("0.4", "1.1", {"CNB_DEPRECATION_MODE": "quiet"}, 0, [], None),
        (
            "0.4",
            "1.1",
            {"CNB_PLATFORM_DEPRECATION_MODE": "silent", "CNB_BUILDPACK_DEPRECATION_MODE": "silent"},
            0,
            [],
            None,
        ),
        (
            "0.4",
            "2.1",
            {"CNB_PLATFORM_DEPRECATION_MODE": "error"},
            11,
            [],
            "platform API 0.4 is deprecated by lifecycle 0.9.0 "
            "(CNB_PLATFORM_DEPRECATION_MODE=error)",
        ),
        (
            "0.4",
            "1.1",
            {"CNB_BUILDPACK_DEPRECATION_MODE": "error"},
            12,
            [WARN_PLATFORM],
            "buildpack API 1.1 is deprecated by lifecycle 0.9.0 "
            "(CNB_BUILDPACK_DEPRECATION_MODE=error)",
        ),
        (
            "1.3",
            "1.0",
            {"CNB_DEPRECATION_MODE": "error"},
            12,
            [],
            "(CNB_DEPRECATION_MODE=error)",
        ),
        ("1.3", "1.0", {"CNB_PLATFORM_DEPRECATION_MODE": "error"}, 0, ["buildpack API 1.0"], None),
        # a bad mode matters only when something is deprecated
        ("1.3", "2.1", {"CNB_DEPRECATION_MODE": "loud"}, 0, [], None),
        ("0.4", "2.1", {"CNB_DEPRECATION_MODE": "loud"}, 1, [], "CNB_DEPRECATION_MODE: must be"),
    ],
)
def test_check(
    doc: Descriptor,
    platform: str | None,
    buildpack: str | None,
    environ: dict[str, str],
    code: int,
    warnings: list[str],
    error: str | None,
) -> None:
    result = lc.check(doc, platform, buildpack, environ)
    assert isinstance(result, Result)
    assert result.exit_code == code, result
    assert result.ok is (code == 0)
    assert len(result.warnings) == len(warnings), result
    for got, expected in zip(result.warnings, warnings, strict=True):
        assert got.startswith(expected), result
    if error is None:
        assert result.error is None
    else:
        assert result.error is not None
        assert error in result.error, result


def test_platform_api_in_force(doc: Descriptor) -> None:
    assert lc.platform_api(doc) == "1.3"
    assert lc.platform_api(doc, "0.5") == "0.5"


# --- settings ---------------------------------------------------------------------------------


def test_lifecycle_settings_from_file_and_environment(tmp_path: Path) -> None:
    file = tmp_path / "lb.toml"
    file.write_text('[lifecycle]\ndescriptor = "/etc/lb/lifecycle.toml"\nplatform_api = "0.5"\n')
    s = config.load(file=file, environ={})
    assert s.lifecycle_descriptor == Path("/etc/lb/lifecycle.toml")
    assert s.platform_api == "0.5"
    assert config.load(file=file, environ={"CNB_PLATFORM_API": "1.1"}).platform_api == "1.1"
    both = {"CNB_PLATFORM_API": "1.1", "LB_LIFECYCLE_PLATFORM_API": "1.2"}
    assert config.load(environ=both).platform_api == "1.2"
    env = {"LB_LIFECYCLE_DESCRIPTOR": str(tmp_path / "d.toml")}
    assert config.load(environ=env).lifecycle_descriptor == tmp_path / "d.toml"
    assert config.load(environ={}).lifecycle_descriptor is None
