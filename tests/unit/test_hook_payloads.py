"""Push payloads of GitHub, GitLab and Bitbucket Cloud, and their signatures, without servers.

The payloads have the shapes the providers document (trimmed to the fields that matter plus a
few that do not, so a parser that reads the wrong field fails): a push to a branch names the
repository, the branch and the head commit; tag pushes and branch deletions start nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from lastbackend.api.errors import ApiError
from lastbackend.api.hooks import (
    Push,
    bitbucket_pushes,
    github_pushes,
    gitlab_pushes,
    matches,
    parse,
    sign,
    verify,
)
from lastbackend.model.platform import ServiceSource
from lastbackend.model.vendors import Vendor

SECRET = "hook-s3cret"
SHA = "a454517a3c5c657cc71548b874d023f2e2d8915b"
OLD = "4cd1f03e075d808b9241ec760087e114d6d0ccf0"
ZERO = "0" * 40


def github_push(**over: Any) -> dict[str, Any]:
    return {
        "ref": "refs/heads/master",
        "before": OLD,
        "after": SHA,
        "created": False,
        "deleted": False,
        "forced": False,
        "repository": {
            "id": 1296269,
            "name": "proxy",
            "full_name": "lastbackend/proxy",
            "owner": {"name": "lastbackend", "login": "lastbackend"},
            "default_branch": "master",
        },
        "pusher": {"name": "pusher-login", "email": "p@example.com"},
        "sender": {"login": "sender-login"},
        "head_commit": {
            "id": SHA,
            "message": "Merge pull request #218\n\nfrom unloop/fix",
            "timestamp": "2017-03-01T17:13:08+03:00",
            "author": {"name": "unloop", "email": "u@example.com", "username": "unloop"},
            "committer": {"name": "GitHub", "email": "noreply@github.com"},
        },
        "commits": [{"id": SHA, "message": "Merge pull request #218"}],
        **over,
    }


def gitlab_push(**over: Any) -> dict[str, Any]:
    return {
        "object_kind": "push",
        "event_name": "push",
        "before": OLD,
        "after": SHA,
        "ref": "refs/heads/main",
        "checkout_sha": SHA,
        "user_name": "Pusher Person",
        "user_username": "pusher",
        "project_id": 15,
        "project": {
            "id": 15,
            "name": "Site",
            "path_with_namespace": "acme/site",
            "default_branch": "main",
        },
        "commits": [
            {
                "id": OLD,
                "message": "older commit",
                "author": {"name": "Someone Else", "email": "e@example.com"},
            },
            {
                "id": SHA,
                "message": "fix the proxy\n\nlonger body",
                "title": "fix the proxy",
                "author": {"name": "Ada", "email": "ada@example.com"},
            },
        ],
        "total_commits_count": 2,
        **over,
    }


def bitbucket_change(branch: str, sha: str, kind: str = "branch") -> dict[str, Any]:
    return {
        "forced": False,
        "old": {"type": kind, "name": branch, "target": {"hash": OLD, "type": "commit"}},
        "new": {
            "type": kind,
            "name": branch,
            "target": {
                "type": "commit",
                "hash": sha,
                "message": f"work on {branch}\n",
                "date": "2024-05-15T23:09:07+00:00",
                "author": {
                    "type": "author",
                    "raw": "Ada Lovelace <ada@example.com>",
                    "user": {"display_name": "Ada L.", "type": "user"},
                },
            },
        },
        "created": False,
        "closed": False,
    }


def bitbucket_push(*changes: dict[str, Any]) -> dict[str, Any]:
    return {
        "actor": {"display_name": "Actor Name", "type": "user"},
        "repository": {
            "type": "repository",
            "name": "Site",
            "full_name": "acme/site",
            "workspace": {"slug": "acme"},
        },
        "push": {"changes": list(changes)},
    }


# GitHub -----------------------------------------------------------------------------------------


def test_github_push_names_repo_branch_and_head_commit() -> None:
    assert github_pushes(github_push()) == [
        Push("lastbackend", "proxy", "master", SHA, "Merge pull request #218", "unloop")
    ]


def test_github_owner_from_name_or_full_name_when_login_is_absent() -> None:
    repo = {"name": "proxy", "full_name": "lastbackend/proxy", "owner": {"name": "lastbackend"}}
    assert github_pushes(github_push(repository=repo))[0].owner == "lastbackend"
    repo = {"name": "proxy", "full_name": "org/proxy"}
    assert github_pushes(github_push(repository=repo))[0].owner == "org"


@pytest.mark.parametrize(
    "over",
    [
        {"ref": "refs/tags/v1.0"},
        {"deleted": True, "after": ZERO, "head_commit": None},
    ],
    ids=["tag", "branch-deleted"],
)
def test_github_tags_and_deletions_start_nothing(over: dict[str, Any]) -> None:
    assert github_pushes(github_push(**over)) == []


def test_github_push_without_head_commit_uses_after_and_pusher() -> None:
    (push,) = github_pushes(github_push(head_commit=None))
    assert (push.commit, push.message, push.committer) == (SHA, "", "pusher-login")


def test_github_branch_with_slashes() -> None:
    assert github_pushes(github_push(ref="refs/heads/feature/x"))[0].branch == "feature/x"


# GitLab -----------------------------------------------------------------------------------------


def test_gitlab_push_takes_the_checkout_commit_from_the_list() -> None:
    assert gitlab_pushes(gitlab_push()) == [
        Push("acme", "site", "main", SHA, "fix the proxy", "Ada")
    ]


def test_gitlab_subgroup_owner_keeps_the_group_path() -> None:
    push = gitlab_push(project={"path_with_namespace": "acme/platform/site"})
    (found,) = gitlab_pushes(push)
    assert (found.owner, found.repo) == ("acme/platform", "site")


def test_gitlab_push_with_commit_outside_the_list_falls_back_to_the_pusher() -> None:
    (push,) = gitlab_pushes(gitlab_push(commits=[]))
    assert (push.commit, push.message, push.committer) == (SHA, "", "Pusher Person")


@pytest.mark.parametrize(
    "over",
    [{"ref": "refs/tags/v1"}, {"checkout_sha": None, "after": ZERO}],
    ids=["tag", "branch-deleted"],
)
def test_gitlab_tags_and_deletions_start_nothing(over: dict[str, Any]) -> None:
    assert gitlab_pushes(gitlab_push(**over)) == []


# Bitbucket --------------------------------------------------------------------------------------


def test_bitbucket_push_has_one_push_per_branch_change() -> None:
    payload = bitbucket_push(
        bitbucket_change("master", SHA),
        bitbucket_change("v1.0", OLD, kind="tag"),
        {"old": bitbucket_change("gone", OLD)["new"], "new": None, "closed": True},
        bitbucket_change("dev", OLD),
    )
    assert bitbucket_pushes(payload) == [
        Push("acme", "site", "master", SHA, "work on master", "Ada L."),
        Push("acme", "site", "dev", OLD, "work on dev", "Ada L."),
    ]


def test_bitbucket_author_without_a_user_is_the_raw_name() -> None:
    change = bitbucket_change("master", SHA)
    del change["new"]["target"]["author"]["user"]
    assert bitbucket_pushes(bitbucket_push(change))[0].committer == "Ada Lovelace"


# errors -----------------------------------------------------------------------------------------


def _parse_error(vendor: str, event: str, payload: Any) -> ApiError:
    header = {"github": "X-GitHub-Event", "gitlab": "X-Gitlab-Event"}.get(vendor, "X-Event-Key")
    with pytest.raises(ApiError) as info:
        parse(vendor, {header: event}, json.dumps(payload).encode())
    return info.value


def test_a_push_without_its_repository_is_422_naming_the_field() -> None:
    payload = github_push()
    del payload["repository"]
    error = _parse_error("github", "push", payload)
    assert error.status == 422
    assert "repository.name" in str(error)
    payload = gitlab_push(project={"name": "x"})
    error = _parse_error("gitlab", "Push Hook", payload)
    assert (error.status, "project.path_with_namespace" in str(error)) == (422, True)
    error = _parse_error("bitbucket", "repo:push", {"repository": {"full_name": "a/b"}})
    assert (error.status, "push.changes" in str(error)) == (422, True)


def test_a_field_of_the_wrong_type_is_422() -> None:
    error = _parse_error("github", "push", github_push(ref=7))
    assert error.status == 422
    assert "ref: must be a string" in str(error)


def test_not_json_is_400_and_not_an_object_is_422() -> None:
    with pytest.raises(ApiError) as info:
        parse("github", {"X-GitHub-Event": "push"}, b"{nope")
    assert info.value.status == 400
    assert _parse_error("gitlab", "Push Hook", [1]).status == 422


def test_other_events_are_not_parsed() -> None:
    assert parse("github", {"X-GitHub-Event": "ping"}, b'{"zen": "x"}') == ("ping", [])
    assert parse("gitlab", {"X-Gitlab-Event": "Tag Push Hook"}, b"not json") == (
        "Tag Push Hook",
        [],
    )


def test_missing_event_header_is_400() -> None:
    with pytest.raises(ApiError) as info:
        parse("bitbucket", {}, b"{}")
    assert info.value.status == 400
    assert "X-Event-Key" in str(info.value)


# signatures -------------------------------------------------------------------------------------

BODY = b'{"ref": "refs/heads/master"}'


def test_sign_is_hmac_sha256_of_the_raw_body() -> None:
    expected = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY) == f"sha256={expected}"


@pytest.mark.parametrize(
    ("vendor", "header"), [("github", "X-Hub-Signature-256"), ("bitbucket", "X-Hub-Signature")]
)
def test_hmac_vendors_accept_their_signature_only(vendor: str, header: str) -> None:
    verify(vendor, SECRET, {header: sign(SECRET, BODY)}, BODY)
    bad = [
        {},
        {header: sign("another", BODY)},
        {header: sign(SECRET, BODY + b" ")},
        {header: sign(SECRET, BODY).replace("sha256=", "sha1=")},
        {"X-Gitlab-Token": SECRET},
    ]
    for headers in bad:
        with pytest.raises(ApiError) as info:
            verify(vendor, SECRET, headers, BODY)
        assert info.value.status == 401
        assert header in str(info.value)


def test_gitlab_accepts_its_token_only() -> None:
    verify("gitlab", SECRET, {"X-Gitlab-Token": SECRET}, BODY)
    for headers in ({}, {"X-Gitlab-Token": SECRET + "x"}, {"X-Hub-Signature": sign(SECRET, BODY)}):
        with pytest.raises(ApiError) as info:
            verify("gitlab", SECRET, headers, BODY)
        assert info.value.status == 401


def test_no_secret_refuses_even_an_unsigned_request() -> None:
    with pytest.raises(ApiError) as info:
        verify("github", "", {"X-Hub-Signature-256": sign("", BODY)}, BODY)
    assert info.value.status == 401
    assert "no webhook secret configured" in str(info.value)


# matching ---------------------------------------------------------------------------------------


def _vendor(name: str, host: str) -> Vendor:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    return Vendor(vendor=name, host=host, token="x", updated=t, created=t)  # type: ignore[arg-type]


def test_a_push_matches_sources_on_the_vendors_hub_repo_and_branch() -> None:
    vendor = _vendor("gitlab", "git.example.com:8443")
    push = Push("Acme", "Site", "main", SHA)
    assert matches(vendor, push, ServiceSource("git.example.com", "acme", "site", "main"))
    assert matches(vendor, push, ServiceSource("gitlab", "acme", "site", "main"))
    assert not matches(vendor, push, ServiceSource("gitlab.com", "acme", "site", "main"))
    assert not matches(vendor, push, ServiceSource("git.example.com", "acme", "site", "Main"))
    assert not matches(vendor, push, ServiceSource("git.example.com", "acme", "other", "main"))
    assert not matches(vendor, push, ServiceSource("git.example.com", "other", "site", "main"))
