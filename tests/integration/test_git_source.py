"""Cloning with the git CLI from a real smart-HTTP server that demands credentials."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lastbackend.sources.git import GitAuth, GitError, clone, tar_tree
from tests.gitserver import GitServer, commit, make_repo

SECRET = "s3cr3t-token-value"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[GitServer]:
    async with GitServer(tmp_path / "repos", "ci", SECRET) as srv:
        yield srv


async def test_clone_records_commit_and_tars_without_dot_git(
    server: GitServer, tmp_path: Path
) -> None:
    sha = make_repo(server.root, "site", {"index.html": "hi\n", "sub/a.txt": "a"})
    out = await clone(server.repo_url("site"), tmp_path / "co", auth=GitAuth("ci", SECRET))
    assert out.commit == sha
    assert out.message == "first commit of site"
    assert out.author == "Ada <ada@example.com>"
    with tarfile.open(fileobj=io.BytesIO(tar_tree(out.path))) as tar:
        names = tar.getnames()
    assert "index.html" in names
    assert "sub/a.txt" in names
    assert not [n for n in names if n.startswith(".git")]


async def test_clone_follows_a_branch_and_new_commits(server: GitServer, tmp_path: Path) -> None:
    make_repo(server.root, "app", {"Procfile": "web: one\n"}, branch="dev")
    second = commit(server.root, "app", {"Procfile": "web: two\n"}, "second")
    out = await clone(
        server.repo_url("app"), tmp_path / "co", ref="dev", auth=GitAuth("ci", SECRET)
    )
    assert out.commit == second
    assert (out.path / "Procfile").read_text() == "web: two\n"


async def test_wrong_password_fails_fast_and_never_shows_it(
    server: GitServer, tmp_path: Path
) -> None:
    make_repo(server.root, "site", {"index.html": "hi"})
    wrong = "not-the-" + SECRET
    with pytest.raises(GitError) as info:
        await clone(
            server.repo_url("site"), tmp_path / "co", auth=GitAuth("ci", wrong), time_limit=30
        )
    message = str(info.value)
    assert message.startswith("clone repo failed:")
    assert "Authentication failed" in message or "401" in message
    assert wrong not in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("name", "ref", "reason"),
    [("missing", None, "not found"), ("site", "no-such-branch", "no-such-branch")],
)
async def test_bad_repo_or_branch_says_why(
    server: GitServer, tmp_path: Path, name: str, ref: str | None, reason: str
) -> None:
    make_repo(server.root, "site", {"index.html": "hi"})
    with pytest.raises(GitError, match="clone repo failed") as info:
        await clone(server.repo_url(name), tmp_path / "co", ref=ref, auth=GitAuth("ci", SECRET))
    assert reason in str(info.value)
