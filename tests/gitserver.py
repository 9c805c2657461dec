"""A git server over smart HTTP on loopback, for staging and build tests.

``git http-backend`` (shipped with git) run as CGI behind a small aiohttp handler that demands
HTTP Basic credentials, so tests exercise the same clone path, auth header and error messages as
a real GitHub or GitLab over HTTPS would, with nothing mocked.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
from pathlib import Path

from aiohttp import web

from tests.support import free_port


def make_repo(
    root: Path,
    name: str,
    files: dict[str, str],
    *,
    branch: str = "main",
    message: str | None = None,
) -> str:
    """A bare repository ``<root>/<name>.git`` with one commit of ``files`` (its subject
    ``message``, or one naming the repository); returns its sha."""
    work = root / f"{name}-work"
    work.mkdir(parents=True)
    for rel, text in files.items():
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Ada",
        "GIT_AUTHOR_EMAIL": "ada@example.com",
        "GIT_COMMITTER_NAME": "Ada",
        "GIT_COMMITTER_EMAIL": "ada@example.com",
    }

    def git(*args: str, cwd: Path = work) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q", "-b", branch)
    git("add", "-A")
    git("commit", "-q", "-m", message or f"first commit of {name}")
    sha = git("rev-parse", "HEAD")
    git("clone", "-q", "--bare", str(work), str(root / f"{name}.git"), cwd=root)
    return sha


def commit(root: Path, name: str, files: dict[str, str], message: str) -> str:
    """Add a commit to ``<name>``'s default branch (through its work tree); returns its sha."""
    work = root / f"{name}-work"
    for rel, text in files.items():
        (work / rel).write_text(text)
    env = {**os.environ, "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.com"}
    env |= {"GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.com"}
    run = {"cwd": work, "env": env, "check": True, "capture_output": True, "text": True}
    subprocess.run(["git", "commit", "-qam", message], **run)  # type: ignore[call-overload]
    subprocess.run(["git", "push", "-q", str(root / f"{name}.git"), "HEAD"], **run)  # type: ignore[call-overload]
    out = subprocess.run(["git", "rev-parse", "HEAD"], **run)  # type: ignore[call-overload]
    return str(out.stdout.strip())


class GitServer:
    """Serves every bare repository under ``root`` at ``http://127.0.0.1:<port>/<name>.git``."""

    def __init__(self, root: Path, user: str, password: str) -> None:
        self.root = root
        self.user = user
        self.password = password
        self.port = free_port()
        self.requests = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def repo_url(self, name: str) -> str:
        return f"{self.url}/{name}.git"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> GitServer:
        """Started, with ``root`` made if it is missing."""
        self.root.mkdir(parents=True, exist_ok=True)
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _authorized(self, request: web.Request) -> bool:
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return request.headers.get("Authorization") == f"Basic {expected}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if not self._authorized(request):
            return web.Response(
                status=401, headers={"WWW-Authenticate": 'Basic realm="git"'}, text="denied"
            )
        body = await request.read()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": request.path,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": self.user,
            "REMOTE_ADDR": "127.0.0.1",
        }
        if request.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = request.headers["Content-Encoding"]
        if request.headers.get("Git-Protocol"):
            env["HTTP_GIT_PROTOCOL"] = request.headers["Git-Protocol"]
        proc = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate(body)
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        status = 200
        headers: dict[str, str] = {}
        for line in head.decode(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        return web.Response(status=status, body=payload, headers=headers)
