"""The build-tag model without servers: ids, artifact types, the key tree and its inverse.

A watch on ``/lastbackend/repos/`` sees single keys; these tests pin that every key names its
object (``keys.repo_ids``) and that the keys of any object rebuild it whole (``objects``).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lastbackend import codec
from lastbackend.model import repos as model
from lastbackend.store import keys
from lastbackend.store.etcd import KV
from lastbackend.store.repos import _stale, entries, objects, version

FILE = {"type": "file", "url": "https://f/x.zip"}
CONTAINER = {"type": "container", "registry_url": "r", "repository": "p", "image_id": "sha256:1"}
MAVEN = {
    "type": "maven",
    "repository_url": "u",
    "group_id": "g",
    "artifact_id": "a",
    "version": "1",
}
RPM = {"type": "rpm", "repository_url": "u", "name": "n", "version": "1", "release": "1.el7"}


def errors(data: Any, cls: Any) -> list[str]:
    with pytest.raises(codec.Invalid) as info:
        codec.structure(data, cls)
    return [str(e) for e in info.value.errors]


# --- ids -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "good",
    [
        "qpid-jms-client",
        "amq-broker.zip",
        "sha256:9f2c",
        "1.0+build.7",
        "a@b",
        "A_b~c",
        "-",
        "x" * 128,
    ],
)
def test_ids_the_document_suggests_are_accepted(good: str) -> None:
    assert model.check_path_id(good) == good


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "is not an id"),
        (".", "path steps"),
        ("..", "path steps"),
        ("a/b", "is not an id"),
        ("a b", "is not an id"),
        ("a%2Fb", "is not an id"),
        ("café", "is not an id"),
        ("a\nb", "is not an id"),
        ("x" * 129, "at most 128 characters"),
    ],
)
def test_ids_that_could_escape_their_place_are_refused(bad: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        model.check_path_id(bad)


# --- artifacts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("artifact", [FILE, CONTAINER, MAVEN, RPM])
def test_each_artifact_type_round_trips_in_the_documents_shape(artifact: dict[str, str]) -> None:
    decoded = codec.structure(artifact, model.Artifact)
    assert type(decoded) is model.ARTIFACTS[artifact["type"]]
    assert codec.unstructure(decoded) == artifact
    assert list(codec.unstructure(decoded)) == list(artifact)  # "type" first, document order


@pytest.mark.parametrize("artifact", [FILE, CONTAINER, MAVEN, RPM])
def test_every_field_of_every_artifact_type_is_required(artifact: dict[str, str]) -> None:
    for field in artifact:
        if field == "type":
            continue
        missing = {k: v for k, v in artifact.items() if k != field}
        assert errors(missing, model.Artifact) == [f"{field}: is required"]
        assert errors({**artifact, field: ""}, model.Artifact) == [
            f"{field}: must not be empty: an artifact's fields say where to get it"
        ]


def test_an_unknown_or_missing_type_names_the_choices() -> None:
    choices = "must be one of file, container, maven, rpm"
    assert errors({"type": "deb", "url": "u"}, model.Artifact) == [f'type: {choices}, got "deb"']
    assert errors({"url": "u"}, model.Artifact) == [f"type: {choices}, got null"]
    assert errors({"artifacts": {"a": {"type": 1}}}, model.Tag) == [
        f"artifacts['a'].type: {choices}, got 1"
    ]


def test_scalar_fields_are_optional_strings_and_children_default_empty() -> None:
    assert codec.structure({}, model.Tag) == model.Tag("", "", "", {})
    assert codec.unstructure(codec.structure({}, model.Repo)) == {"source_url": "", "branches": {}}
    assert errors({"job_url": None}, model.Branch) == ["job_url: must be a string, got null"]
    assert errors({"commit_id": 7}, model.Tag) == ["commit_id: must be a string, got a number"]
    assert errors({"tags": {"t": {"x": 1}}}, model.Branch) == ["tags['t'].x: unknown field"]


def test_address_is_the_documents_path() -> None:
    assert model.address(("r",)) == "repos/r"
    assert model.address(("r", "b", "t", "a")) == "repos/r/branches/b/tags/t/artifacts/a"


# --- keys ----------------------------------------------------------------------------------------

LEVEL_IDS = [("r",), ("r", "b"), ("r", "b", "t"), ("r", "b", "t", "a")]


@pytest.mark.parametrize("ids", LEVEL_IDS)
def test_every_objects_key_names_it(ids: tuple[str, ...]) -> None:
    key = keys.repo_key(ids)
    assert keys.repo_ids(key) == ids
    # The key, less the root and "/meta", is the document's address of the object.
    assert key.removeprefix(keys.ROOT).removesuffix("/meta") == model.address(ids)


def test_the_key_tree_is_the_designs() -> None:
    assert keys.repo_key(("r",)) == "/lastbackend/repos/r/meta"
    assert keys.repo_key(("r", "b")) == "/lastbackend/repos/r/branches/b/meta"
    assert keys.repo_key(("r", "b", "t")) == "/lastbackend/repos/r/branches/b/tags/t/meta"
    assert keys.repo_key(LEVEL_IDS[3]) == "/lastbackend/repos/r/branches/b/tags/t/artifacts/a"
    assert keys.repo_object(("demo",)) == "/lastbackend/repos/demo/"
    assert not keys.repo_key(("demo2",)).startswith(keys.repo_object(("demo",)))


@pytest.mark.parametrize(
    "key",
    [
        "/lastbackend/repos/r",
        "/lastbackend/repos/r/",
        "/lastbackend/repos//meta",
        "/lastbackend/repos/r/notes",
        "/lastbackend/repos/r/branches/b",
        "/lastbackend/repos/r/tags/t/meta",
        "/lastbackend/repos/r/branches/b/tags/t/meta/x",
        "/lastbackend/repos/r/branches/b/tags/t/files/a",
        "/lastbackend/projects/p/meta",
    ],
)
def test_keys_that_name_no_object_are_told_apart(key: str) -> None:
    assert keys.repo_ids(key) is None


# --- rebuilding objects from keys ----------------------------------------------------------------

ids_ = st.text(alphabet="abcz09.-:", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
text = st.text(alphabet="abc/:.", max_size=8)
artifacts = st.sampled_from([FILE, CONTAINER, MAVEN, RPM]).map(
    lambda a: codec.structure(a, model.Artifact)
)
tags = st.builds(model.Tag, text, text, text, st.dictionaries(ids_, artifacts, max_size=3))
branches = st.builds(model.Branch, text, st.dictionaries(ids_, tags, max_size=3))
repos = st.builds(model.Repo, text, st.dictionaries(ids_, branches, max_size=3))


def normal(node: Any) -> Any:
    return codec.unstructure(node)


@given(repos)
def test_the_keys_of_any_object_rebuild_it_and_every_object_below(repo: model.Repo) -> None:
    pairs = entries(("r",), repo)
    assert len(pairs) == model.count_keys(repo)
    built = objects(pairs.items())
    assert normal(built[("r",)]) == normal(repo)
    for branch_id, branch in repo.branches.items():
        assert normal(built[("r", branch_id)]) == normal(branch)
        for tag_id, tag in branch.tags.items():
            assert normal(built[("r", branch_id, tag_id)]) == normal(tag)
    # Each key alone decodes to its object's own fields, whatever order a watch delivers them in.
    assert objects(reversed(list(pairs.items()))) == built


def test_children_without_their_parent_and_stray_keys_are_left_out() -> None:
    tag = codec.structure({"artifacts": {"a": FILE}}, model.Tag)
    pairs = dict(entries(("r", "b", "t"), tag))
    pairs["/lastbackend/repos/r/notes"] = b"not json"
    built = objects(pairs.items())
    assert set(built) == {("r", "b", "t"), ("r", "b", "t", "a")}
    pairs[keys.repo_key(("r", "b"))] = b'{"job_url":"j"}'
    assert normal(objects(pairs.items())[("r", "b")]) == {
        "job_url": "j",
        "tags": {"t": normal(tag)},
    }


def test_a_replacement_deletes_dropped_subtrees_whole_and_nothing_else() -> None:
    stored = codec.structure(
        {
            "branches": {
                "keep": {"tags": {"t1": {"artifacts": {"a": FILE, "gone": FILE}}, "t2": {}}},
                "drop": {"tags": {"t": {"artifacts": {"a": FILE}}}},
            }
        },
        model.Repo,
    )
    body = codec.structure(
        {"branches": {"keep": {"tags": {"t1": {"artifacts": {"a": FILE}}}}}}, model.Repo
    )
    current = [*entries(("r",), stored), "/lastbackend/repos/r/branches/keep/stray"]
    ops = _stale(("r",), entries(("r",), body), current)
    assert [(op.key, bool(op.range_end)) for op in ops] == [
        ("/lastbackend/repos/r/branches/drop/", True),
        ("/lastbackend/repos/r/branches/keep/tags/t2/", True),
        ("/lastbackend/repos/r/branches/keep/stray", False),
        ("/lastbackend/repos/r/branches/keep/tags/t1/artifacts/gone", False),
    ]


def test_version_counts_keys_so_a_delete_changes_it() -> None:
    def kv(key: str, mod: int) -> KV:
        return KV(key, b"", mod, mod, 1)

    before = [kv("a", 5), kv("b", 7), kv("c", 6)]
    assert version(before) == "7-3"
    assert version(before[:1] + before[2:]) == "6-2"
    assert version(before[1:]) == "7-2"  # the newest key stayed: the count still moved
    assert version([]) == "0-0"
