"""Fetching source from git with the ``git`` CLI (DESIGN.md section 11), for staging and builds.

The CLI, not a library: every transport, proxy setting and CA bundle users already configured
works. Credentials never appear in a command line (``ps`` shows those to every user): they reach
git as an ``http.extraHeader`` set through ``GIT_CONFIG_*`` environment variables, and every
message this module raises has them redacted. ``GIT_TERMINAL_PROMPT=0`` makes a missing or wrong
credential fail at once instead of waiting for a password on a terminal nobody watches.

Credentials written into a URL (``https://user:password@host/repo.git``) are taken out of it:
:func:`split_userinfo` is how a git package's URL is stored (the API keeps the user and password
as the package's encrypted credentials), :func:`clone` does the same to a URL that still has
them, and :func:`mask_url` is for every URL that is shown or logged. git runs without the
process's ``LB_*`` variables, which may hold the API's tokens and the secrets key.

Bounds. A clone has a deadline (``CLONE_TIMEOUT``; a stalled HTTP transfer fails sooner, by
curl's low-speed limit) and a size: git has no size limit of its own, so while it runs the
checkout's directory is measured every :data:`SIZE_POLL` seconds and git is killed once it takes
more than ``git.max_checkout_bytes`` (it may overshoot by what it writes in one interval).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import re
import signal
import tarfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote

import attrs

CLONE_TIMEOUT = 300.0
SIZE_POLL = 0.25
"""Seconds between looks at a clone's size while git runs."""
LOW_SPEED_BYTES, LOW_SPEED_SECONDS = 1000, 60
"""An HTTP transfer slower than this many bytes a second for that many seconds is given up
(curl's low-speed limit): a server that stalls fails the clone long before ``CLONE_TIMEOUT``."""
PRIVATE_ENV = "LB_"
"""The prefix of the variables git does not inherit: lastbackend's own settings and secrets."""
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s]*@)")
"""A URL's scheme and userinfo: everything between ``://`` and the last ``@`` before the path."""


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


@attrs.frozen(repr=False)
class UrlCredentials:
    """What a URL's userinfo held, percent-decoded. ``https://TOKEN@host`` (GitHub's form for a
    token) has no password: the token is then the password, since a user name is shown."""

    url: str
    """The URL without its userinfo."""
    user: str
    password: str

    def __repr__(self) -> str:
        return f"UrlCredentials(url={self.url!r}, user={self.user!r}, password='***')"


def split_userinfo(url: str) -> UrlCredentials | None:
    """The credentials in ``url``'s userinfo and the URL without them; None when it has none.

    An ``ssh://`` URL keeps a user without a password: that is the login name ssh needs, not a
    secret. scp-like URLs (``git@host:path``) have no scheme and are left as they are.
    """
    match = _URL.match(url)
    if match is None:
        return None
    userinfo = match["userinfo"][:-1]
    user, colon, password = userinfo.partition(":")
    ssh = match["scheme"].lower() == "ssh://"
    if ssh and not colon:
        return None
    bare = match["scheme"] + (user + "@" if ssh else "") + url[match.end() :]
    if not colon:
        return UrlCredentials(bare, "", unquote(user))
    return UrlCredentials(bare, "" if ssh else unquote(user), unquote(password))


def mask_url(text: str) -> str:
    """``text`` with the credentials in the userinfo of every URL in it shown as ``***``: for
    what is shown or logged. An ssh login name alone is not a credential (see
    :func:`split_userinfo`) and stays."""

    def masked(match: re.Match[str]) -> str:
        ssh_login = match["scheme"].lower() == "ssh://" and ":" not in match["userinfo"]
        return match[0] if ssh_login else f"{match['scheme']}***@"

    return _URL.sub(masked, text)


@attrs.frozen
class Checkout:
    path: Path
    commit: str
    message: str
    author: str


def _environ(auth: GitAuth | None) -> dict[str, str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(PRIVATE_ENV)},
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/true",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_HTTP_LOW_SPEED_LIMIT": str(LOW_SPEED_BYTES),
        "GIT_HTTP_LOW_SPEED_TIME": str(LOW_SPEED_SECONDS),
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
    return mask_url(text)


async def _git(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str],
    time_limit: float,
    watch: Path | None = None,
    max_bytes: int | None = None,
) -> tuple[int, str, str]:
    """Run git; with ``watch`` and ``max_bytes``, kill it once ``watch`` takes more than that."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: see _kill
    )
    try:
        async with asyncio.timeout(time_limit):
            out, err = await _communicate(proc, watch, max_bytes)
    except TimeoutError:
        await _kill(proc)
        raise GitError(f"git {args[0]} took longer than {time_limit:.0f}s") from None
    except (asyncio.CancelledError, CheckoutTooLarge):
        await _kill(proc)
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill git and the helpers it started (``git-remote-http``, ``index-pack``): they hold its
    output pipes, and ``wait`` returns only once those close, so killing git alone would leave
    a helper blocked on a silent server holding the caller forever."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


async def _communicate(
    proc: asyncio.subprocess.Process, watch: Path | None, max_bytes: int | None
) -> tuple[bytes, bytes]:
    """git's output once it exits, looking at the size of ``watch`` every :data:`SIZE_POLL`
    seconds meanwhile: git has no size limit of its own."""
    talk = asyncio.ensure_future(proc.communicate())
    try:
        while watch is not None and max_bytes is not None:
            done, _ = await asyncio.wait({talk}, timeout=SIZE_POLL)
            if done:
                break
            _check_size(await asyncio.to_thread(disk_usage, watch), max_bytes)
        return await talk
    finally:
        if not talk.done():
            talk.cancel()
            await asyncio.gather(talk, return_exceptions=True)


class CheckoutTooLarge(GitError):
    """A clone took more room than ``git.max_checkout_bytes``; git was stopped."""


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise CheckoutTooLarge(
            f"clone repo failed: the checkout takes more than {max_bytes} bytes on disk, the "
            f"most git.max_checkout_bytes allows (git was stopped at {size} bytes)"
        )


def disk_usage(path: Path) -> int:
    """Bytes of the files under ``path`` (symlinks not followed; 0 if it does not exist yet).
    Files that vanish while it looks (git renames its temporary packs) are skipped."""
    total = 0
    stack = [str(path)]
    while stack:
        try:
            scan = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with scan:
            for entry in scan:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
    return total


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
    max_bytes: int | None = None,
) -> Checkout:
    """A shallow clone of ``ref`` (a branch or tag; the remote's default when None) into ``dest``.

    Raises :class:`GitError` with git's reason: a wrong URL, a missing branch, refused
    credentials all read as ``clone repo failed: fatal: ...``. Credentials in ``url`` are used
    when ``auth`` is None, and never put on git's command line either way. With ``max_bytes``
    (``git.max_checkout_bytes``), a clone whose directory grows past it is stopped and is a
    :class:`CheckoutTooLarge` naming the setting.
    """
    inline = split_userinfo(url)
    if inline is not None:
        url = inline.url
        if auth is None:
            auth = GitAuth(inline.user, inline.password)
    env = _environ(auth)
    # no template: the sample hooks are not copied into every checkout
    args = ["clone", "--quiet", "--depth", "1", "--single-branch", "--no-tags", "--template="]
    if ref:
        args += ["--branch", ref]
    code, _, err = await _git(
        *args,
        "--",
        url,
        str(dest),
        env=env,
        time_limit=time_limit,
        watch=dest,
        max_bytes=max_bytes,
    )
    if code != 0:
        raise GitError(f"clone repo failed: {_redact(_reason(err), auth)}")
    if max_bytes is not None:  # git may have finished between two looks
        _check_size(await asyncio.to_thread(disk_usage, dest), max_bytes)
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
