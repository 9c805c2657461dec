"""The converter is strict and says which field is wrong and why."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from lastbackend import codec
from lastbackend.model.common import MASK, mask_secrets
from lastbackend.model.platform import Build, Meta, ServiceConfig, ServiceCreate


def errors(data: Any, cls: type = ServiceCreate) -> list[str]:
    with pytest.raises(codec.Invalid) as info:
        codec.structure(data, cls)
    return [str(e) for e in info.value.errors]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"name": "x", "config": {"replicas": True}},
            "config.replicas: must be an integer, got a boolean",
        ),
        (
            {"name": "x", "config": {"replicas": "3"}},
            "config.replicas: must be an integer, got a string",
        ),
        (
            {"name": "x", "config": {"memory": 1.5}},
            "config.memory: must be an integer, got a number",
        ),
        (
            {"name": "x", "config": {"env": {"A": 1}}},
            "config.env['A']: must be a string, got a number",
        ),
        ({"name": "x", "config": {"ports": []}}, "config.ports: must be an object, got an array"),
        (
            {"name": "x", "config": {"ports": {"80/tcp": 0}}},
            "config.ports['80/tcp']: '80/tcp' is not",
        ),
        ({"name": "x", "config": {"ports": {"80/TCP": 70000}}}, "between 0 and 65535, got 70000"),
        ({"name": "x", "config": {"replicas": 1001}}, "config.replicas: replicas must be between"),
        ({"name": "x", "bogus": 1}, "bogus: unknown field"),
        ({"name": "x", "config": {"bogus": 1}}, "config.bogus: unknown field"),
        ({}, "name: is required"),
        ({"name": ""}, "name: must not be empty"),
        ({"name": "A B"}, "name: 'A B' is not a DNS label"),
        ({"name": "../x"}, "name: '../x' is not a DNS label"),
        ({"name": "a" * 64}, "name: must be at most 63 characters, got 64"),
        ({"name": "0b3a2f2e-8f5e-4a4b-9a55-5d0b7f7a1c11"}, "names must not be UUIDs"),
        ({"name": "x", "domains": {"a_b.com": True}}, "domains['a_b.com']: label 'a_b' is not"),
        ({"name": "x", "domains": {"*.com": True}}, "domains['*.com']: a wildcard needs"),
        ({"name": "x", "domains": {"a.com": "yes"}}, "domains['a.com']: must be a boolean"),
        ({"name": "x", "image": "UPPER CASE"}, "image: 'UPPER CASE' is not a docker image"),
        ({"name": "x", "source": {"hub": "github.com"}}, "source.owner: is required"),
        ({"name": "x", "source": {"hub": "g.com", "owner": "..", "repo": "r"}}, "source.owner"),
        (
            {"name": "x", "source": {"hub": "g.com", "owner": "o", "repo": "r", "branch": "a..b"}},
            "branch",
        ),
        ({"name": "x", "config": {"volumes": {"data": "relative"}}}, "config.volumes['data']"),
        ({"name": "x", "config": {"env": {"1BAD": "v"}}}, "config.env['1BAD']"),
        ([1], "body: must be a JSON object, got an array"),
    ],
)
def test_bad_values_name_the_field_and_the_reason(data: Any, expected: str) -> None:
    found = errors(data)
    assert any(expected in e for e in found), found


def test_every_problem_is_reported_at_once() -> None:
    found = errors({"name": "A", "config": {"replicas": "x", "bogus": 1}})
    assert len(found) == 3, found


@pytest.mark.parametrize(
    "image",
    ["busybox", "library/nginx:1.27", "localhost:5000/team/app:v1.2-rc", "a/b@sha256:" + "0" * 64],
)
def test_good_images(image: str) -> None:
    assert codec.structure({"name": "x", "image": image}, ServiceCreate).image == image


def test_defaults_fill_a_minimal_service() -> None:
    spec = codec.structure({"name": "web"}, ServiceCreate)
    assert spec.config == ServiceConfig()
    assert spec.config.replicas == 1
    assert spec.config.memory == 128
    assert spec.source is None
    assert spec.domains == {}
    assert spec.image is None


def test_a_whole_number_written_with_a_fraction_is_an_integer() -> None:
    """JSON (and JSON Schema) has one number type: clients that send ``3.0`` mean 3."""
    spec = codec.structure({"name": "web", "config": {"replicas": 3.0}}, ServiceCreate)
    assert spec.config.replicas == 3
    assert type(spec.config.replicas) is int


def test_timestamps_are_rfc3339_utc() -> None:
    t = datetime(2017, 3, 1, 14, 13, 8, tzinfo=UTC)
    raw = codec.dumps(Meta("demo", t, t))
    assert raw == (
        b'{"name":"demo","created":"2017-03-01T14:13:08Z",'
        b'"updated":"2017-03-01T14:13:08Z","description":""}'
    )
    # another zone is normalised to UTC
    meta = codec.loads(raw.replace(b"14:13:08Z", b"17:13:08+03:00"), Meta)
    assert meta.created == t


def test_build_uses_the_documents_field_names() -> None:
    t = datetime(2017, 3, 1, tzinfo=UTC)
    build = Build("failed", t, t, commit="a45", commit_message="Merge", message="clone repo failed")
    data = codec.unstructure(build)
    assert data["commitMessage"] == "Merge"
    assert "commit_message" not in data
    assert codec.structure(data, Build) == build


def test_secrets_are_masked_at_any_depth() -> None:
    value = {"user": "u", "password": "p", "nested": [{"token": "t", "api_key": ""}]}
    assert mask_secrets(value) == {
        "user": "u",
        "password": MASK,
        "nested": [{"token": MASK, "api_key": ""}],
    }
