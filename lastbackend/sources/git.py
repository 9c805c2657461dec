"""Fetching source from git with the ``git`` CLI (DESIGN.md section 11), for staging and builds.

The CLI, not a library: every transport, proxy setting and CA bundle users already configured
works. Credentials never appear in a command line (``ps`` shows those to every user): they reach
git as an ``http.extraHeader`` set through ``GIT_CONFIG_*`` environment variables, and every
message this module raises has them redacted. ``GIT_TERMINAL_PROMPT=0`` makes a missing or wrong
credential fail at once instead of waiting for a password on a terminal nobody watches.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path

import attrs

CLONE_TIMEOUT = 300.0


class GitError(RuntimeError):
    """A clone or checkout failed; the message is fit to show the user (secrets redacted)."""


@attrs.frozen(repr=False)
class GitAuth:
    """HTTP credentials: a user and a password or token (``api_key`` counts as the password)."""

    user: str = ""
    password: str = ""

    def __repr__(self) -> str:
        return f"GitAuth(user={self.user!r}, password='***')"

    @property
    def header(self) -> str:
        raw = f"{self.user or 'git'}:{self.password}".encode()
        return f"Authorization: Basic {base64.b64encode(raw).decode()}"


@attrs.frozen
class Checkout:
    path: Path
    commit: str
    message: str
    author: str


def _environ(auth: GitAuth | None) -> dict[str, str]:
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/true",
        "GIT_CONFIG_NOSYSTEM": "1",
        "LC_ALL": "C",
    }
    if auth is not None and (auth.user or auth.password):
        env |= {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": auth.header,
        }
    return env


def _redact(text: str, auth: GitAuth | None) -> str:
    if auth is not None:
        for secret in (auth.password, auth.header):
            if secret:
                text = text.replace(secret, "***")
    return text


async def _git(
    *args: str, cwd: Path | None = None, env: Mapping[str, str], time_limit: float
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(time_limit):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise GitError(f"git {args[0]} took longer than {time_limit:.0f}s") from None
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _reason(stderr: str) -> str:
    """The line of git's output that says what went wrong (``fatal: ...``), or the last one."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return (fatal or lines or ["no output"])[-1]


async def clone(
    url: str,
    dest: Path,
    *,
    ref: str | None = None,
    auth: GitAuth | None = None,
    time_limit: float = CLONE_TIMEOUT,
) -> Checkout:
    """A shallow clone of ``ref`` (a branch or tag; the remote's default when None) into ``dest``.

    Raises :class:`GitError` with git's reason: a wrong URL, a missing branch, refused
    credentials all read as ``clone repo failed: fatal: ...``.
    """
    env = _environ(auth)
    args = ["clone", "--quiet", "--depth", "1", "--single-branch", "--no-tags"]
    if ref:
        args += ["--branch", ref]
    code, _, err = await _git(*args, "--", url, str(dest), env=env, time_limit=time_limit)
    if code != 0:
        raise GitError(f"clone repo failed: {_redact(_reason(err), auth)}")
    code, out, err = await _git(
        "log", "-1", "--format=%H%n%an <%ae>%n%s", cwd=dest, env=env, time_limit=time_limit
    )
    if code != 0:
        raise GitError(f"reading the cloned commit failed: {_redact(_reason(err), auth)}")
    commit, author, message = [*out.splitlines(), "", "", ""][:3]
    return Checkout(dest, commit.strip(), message.strip(), author.strip())


def tar_tree(path: Path) -> bytes:
    """The checkout as an uncompressed tar rooted at the app directory, without ``.git``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for entry in sorted(path.iterdir()):
            if entry.name == ".git":
                continue
            tar.add(entry, arcname=entry.name)
    return buffer.getvalue()
