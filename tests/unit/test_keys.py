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


# parsers: each the inverse of its builder, None for keys of any other shape --------------------

PID = "0b0a4a0e-4f1e-4c2f-9a59-1f0d8d1e6a01"
SID = "4d2f3c1b-8e7a-4b6c-9d5e-2a1b0c9d8e7f"
GUID = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"

OTHER_SHAPES = [
    keys.project_meta(PID),
    keys.project(PID),
    keys.service(PID, SID),
    keys.services(PID),
    keys.containers(PID, SID),
    keys.packages(PID, SID),
    keys.droplets(PID, SID),
    keys.build(PID, SID, 3),
    keys.image_build(PID, 3),
    keys.package_owner(GUID),
    keys.droplet_owner(GUID),
    keys.pod(GUID),
    keys.node("n1"),
    f"{keys.container(PID, SID, 'c')}/more",
    f"{keys.package(PID, SID, GUID)}/more",
    keys.container(PID, SID, "c").replace("/services/", "/servicez/"),
    keys.container(PID, SID, "c").replace(keys.ROOT, "/other/"),
    keys.container(PID, "", "c"),
    "",
]


def test_service_of_names_the_service_of_any_key_in_its_subtree() -> None:
    for part in keys.SERVICE_PARTS + keys.APP_PARTS:
        assert keys.service_of(keys.service_part(PID, SID, part)) == (PID, SID)
    assert keys.service_of(keys.container(PID, SID, "c")) == keys.ServiceRef(PID, SID)
    assert keys.service_of(keys.build(PID, SID, 3)) == (PID, SID)
    assert keys.service_of(keys.droplet(PID, SID, GUID)) == (PID, SID)


def test_service_of_refuses_keys_outside_every_service() -> None:
    for key in (
        keys.project_meta(PID),
        keys.service(PID, SID),  # the subtree's prefix is no key in it
        keys.service_part(PID, SID, "meta").replace("/services/", "/servicez/"),
        keys.service_name(PID, "web"),
        keys.pod_spec("n1", GUID),
        keys.image_part(PID, "meta"),
        "",
    ):
        assert keys.service_of(key) is None, key


def test_container_of_round_trips() -> None:
    found = keys.container_of(keys.container(PID, SID, "abc123"))
    assert found == keys.ContainerRef(PID, SID, "abc123")
    assert (found.project, found.service, found.container) == (PID, SID, "abc123")


def test_container_of_refuses_other_shapes() -> None:
    for key in [*OTHER_SHAPES, keys.package(PID, SID, GUID), keys.droplet(PID, SID, GUID)]:
        assert keys.container_of(key) is None, key


def test_owned_of_round_trips_packages_and_droplets() -> None:
    assert keys.owned_of(keys.package(PID, SID, GUID)) == (PID, SID, "packages", GUID)
    assert keys.owned_of(keys.droplet(PID, SID, GUID)) == (PID, SID, "droplets", GUID)
    assert keys.package_of(keys.package(PID, SID, GUID)) == keys.OwnedRef(
        PID, SID, "packages", GUID
    )
    assert keys.droplet_of(keys.droplet(PID, SID, GUID)) == keys.OwnedRef(
        PID, SID, "droplets", GUID
    )


def test_package_of_and_droplet_of_tell_the_two_apart() -> None:
    assert keys.package_of(keys.droplet(PID, SID, GUID)) is None
    assert keys.droplet_of(keys.package(PID, SID, GUID)) is None


def test_owned_of_refuses_other_shapes() -> None:
    for key in [*OTHER_SHAPES, keys.container(PID, SID, "c")]:
        assert keys.owned_of(key) is None, key
        assert keys.package_of(key) is None, key
        assert keys.droplet_of(key) is None, key


def test_owner_of_contained_finds_the_helper_key() -> None:
    assert keys.owner_of_contained(keys.package(PID, SID, GUID)) == keys.package_owner(GUID)
    assert keys.owner_of_contained(keys.droplet(PID, SID, GUID)) == keys.droplet_owner(GUID)
    for key in [*OTHER_SHAPES, keys.container(PID, SID, "c")]:
        assert keys.owner_of_contained(key) is None, key


def test_pod_spec_of_round_trips() -> None:
    assert keys.pod_spec_of(keys.pod_spec("n1", GUID)) == keys.PodRef("n1", GUID)


def test_pod_spec_of_refuses_other_shapes() -> None:
    for key in (
        keys.node_pods("n1"),
        f"{keys.pod_spec('n1', GUID)}/more",
        keys.pod(GUID),
        keys.node("n1"),
        keys.PODS,
        f"{keys.PODS}/{GUID}",  # no node
    ):
        assert keys.pod_spec_of(key) is None, key


def test_entry_of_round_trips_and_is_not_fooled_by_a_shared_prefix() -> None:
    assert keys.entry_of(keys.HELPER_PROJECTS, keys.project_name("demo")) == "demo"
    assert keys.entry_of(keys.HELPER_PROJECTS, keys.project_name("demo2")) == "demo2"
    assert keys.entry_of(keys.service_names(PID), keys.service_name(PID, "web")) == "web"
    assert keys.entry_of(keys.HELPER_IMAGES, keys.image_name("reg:5000/a/b")) == "reg:5000%2Fa%2Fb"
    assert keys.entry_of(keys.HELPER_PACKAGES, keys.package_owner(GUID)) == GUID


def test_entry_of_refuses_deeper_and_foreign_keys() -> None:
    assert keys.entry_of(keys.HELPER_PROJECTS, keys.service_name(PID, "web")) is None
    assert keys.entry_of(keys.HELPER_PROJECTS, keys.project_helpers(PID)) is None
    assert keys.entry_of(keys.HELPER_PROJECTS, keys.HELPER_PROJECTS) is None
    assert keys.entry_of(keys.HELPER_PACKAGES, keys.droplet_owner(GUID)) is None
    # "demo" names a project, never the subtree or the helpers of a project "demo2"
    assert keys.entry_of(keys.project("demo"), keys.project_meta("demo2")) is None
    assert keys.entry_of(keys.service_names("demo"), keys.service_name("demo2", "web")) is None


def test_keys_of_a_name_that_prefixes_another_parse_to_their_own_name() -> None:
    for name in ("demo", "demo2"):
        assert keys.service_of(keys.service_part(name, SID, "meta")) == (name, SID)
        assert keys.container_of(keys.container(name, SID, "c")) == (name, SID, "c")
        assert keys.owned_of(keys.package(name, SID, GUID)) == (name, SID, "packages", GUID)
        assert keys.pod_spec_of(keys.pod_spec(name, GUID)) == (name, GUID)
    assert keys.service_of(keys.service_part(PID, "demo2", "meta")) == (PID, "demo2")
    assert keys.container_of(keys.container(PID, SID, "demo2")) == (PID, SID, "demo2")


def test_owner_values_round_trip_and_malformed_ones_are_refused() -> None:
    value = keys.owner_value(PID, SID)
    assert value == f"{PID}:{SID}"
    assert keys.parse_owner(value.encode()) == keys.ServiceRef(PID, SID)
    for raw in (b"", PID.encode(), f"{PID}:".encode(), f"{PID}:web".encode(), b"\xff:\xff"):
        assert keys.parse_owner(raw) is None, raw


def test_project_name_keys_are_told_apart_from_their_prefixes() -> None:
    assert keys.is_project_name_key(keys.project_name("demo2"))
    assert not keys.is_project_name_key(keys.project_helpers("demo"))
    assert not keys.is_project_name_key(keys.project_meta("demo"))


def test_build_keys_parse_to_their_target_and_number_only() -> None:
    assert keys.build_of(keys.build(PID, SID, 12)) == keys.BuildRef(PID, SID, "", 12)
    assert keys.build_of(keys.image_build(GUID, 3)) == keys.BuildRef("", "", GUID, 3)
    for other in (
        keys.builds(PID, SID) + "012",  # not how build() spells 12
        keys.builds(PID, SID) + "\u00b2",  # a Unicode digit
        keys.builds(PID, SID) + "1/x",
        keys.image_builds(GUID) + "-1",
        keys.container(PID, SID, "12"),
        keys.image_part(GUID, "meta"),
    ):
        assert keys.build_of(other) is None, other
