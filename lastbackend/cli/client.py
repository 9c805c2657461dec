"""Where the user commands find the API, and how they call it: httpx, one connection pool per run.

The endpoint and token come from ``LB_URL`` / ``LB_TOKEN``, else the file ``lastbackend login``
wrote (``$XDG_CONFIG_HOME/lastbackend/config.toml``, mode 0600), else the daemon's default
``http://127.0.0.1:2967`` without a token. Every failure becomes a :class:`Failure` whose lines are
the API's own ``detail`` entries (``field: reason``), so a 422 reads as the server wrote it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import attrs
import httpx

from lastbackend.cli.output import Failure

DEFAULT_URL = "http://127.0.0.1:2967"


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME/lastbackend/config.toml``, XDG's default ``~/.config`` without it."""
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "lastbackend" / "config.toml"


@attrs.frozen
class Login:
    url: str = DEFAULT_URL
    token: str = attrs.field(default="", repr=False)  # never shown


def load(environ: Mapping[str, str] = os.environ) -> Login:
    """The login in force: the environment beats the file, which beats the default."""
    stored: dict[str, Any] = {}
    path = config_path(environ)
    if path.exists():
        try:
            stored = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise Failure(f"{path}: {exc}") from None
    url = environ.get("LB_URL") or str(stored.get("url") or DEFAULT_URL)
    token = environ.get("LB_TOKEN", str(stored.get("token") or ""))
    return Login(url.rstrip("/"), token)


def save(login: Login, environ: Mapping[str, str] = os.environ) -> Path:
    """Write the login, readable by this user only (the token is a credential)."""
    path = config_path(environ)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # TOML basic strings take JSON's escapes for what a URL or token can hold.
    text = f"url = {json.dumps(login.url)}\ntoken = {json.dumps(login.token)}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # an older file keeps its mode otherwise
        out.write(text)
    return path


def details(response: httpx.Response) -> list[str]:
    """The ``detail`` of each error the API sent, else the status line."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        errors = response.json()["errors"]
        lines = [str(e.get("detail") or e.get("title")) for e in errors]
        if lines:
            return lines
    return [f"{response.status_code} {response.reason_phrase}"]


class Api:
    """The API at one endpoint: JSON in, JSON out, failures as :class:`Failure`."""

    def __init__(self, login: Login, *, timeout: float = 30.0) -> None:
        self.url = login.url
        headers = {"Authorization": f"Bearer {login.token}"} if login.token else {}
        self.http = httpx.Client(
            base_url=login.url, headers=headers, timeout=httpx.Timeout(timeout, connect=5.0)
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code == 401:
            raise Failure(
                f"{self.url} refused the token (401): log in with `lastbackend login "
                f"{self.url} --token TOKEN` or set LB_TOKEN"
            )
        if response.status_code == 403:
            raise Failure(f"{self.url}: this token may not do that (403): {details(response)[0]}")
        if response.is_error:
            raise Failure(*details(response))
        return response

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as exc:
            raise Failure(
                f"cannot reach the API at {self.url} ({_reason(exc)}): is the daemon running? "
                "(`lastbackend login URL` or LB_URL to choose another)"
            ) from None
        except httpx.TimeoutException:
            raise Failure(f"the API at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise Failure(f"{self.url}: {exc}") from None

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        missing_ok: bool = False,
    ) -> Any:
        """One request: the decoded body (``None`` for 204, or for a 404 with ``missing_ok``)."""
        with self._reaching():
            response = self.http.request(
                method, path, json=body, params=params, headers=_json if body is not None else None
            )
        if missing_ok and response.status_code == 404:
            return None
        self._check(response)
        if response.status_code == 204 or not response.content:
            return None
        if "json" in response.headers.get("content-type", ""):
            return response.json()
        return response.text

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def revision(self, path: str) -> int:
        """The etcd revision a list was read at (its ``X-Etcd-Revision``): where to resume."""
        with self._reaching():
            response = self._check(self.http.get(path, params={"per_page": 1}))
        return int(response.headers.get("X-Etcd-Revision") or 0)

    def every(self, path: str, **params: Any) -> list[Any]:
        """Every resource of a list, following ``pagination.next.href`` to the end, as CF
        clients do."""
        found: list[Any] = []
        body = self.get(path, per_page=5000, **params)
        while True:
            found += body["resources"]
            following = (body.get("pagination") or {}).get("next")
            if not following:
                return found
            body = self.call("GET", following["href"])

    def upload(self, path: str, field: str, name: str, stream: IO[bytes], size: int) -> Any:
        """A ``multipart/form-data`` body streamed from ``stream``, never whole in memory."""
        boundary = os.urandom(16).hex()
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def chunks() -> Iterable[bytes]:
            yield head
            while chunk := stream.read(256 * 1024):
                yield chunk
            yield tail

        headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail)),
        }
        with self._reaching():
            response = self.http.post(path, content=chunks(), headers=headers, timeout=None)
        return self._check(response).json()

    @contextlib.contextmanager
    def lines(
        self, path: str, *, idle: float | None = None, **params: Any
    ) -> Iterator[Iterator[str]]:
        """A followed text stream (logs, events), line by line; it ends after ``idle`` seconds
        without a byte (replayed history has all come), else only when the server ends it."""
        with (
            self._reaching(),
            self.http.stream(
                "GET",
                path,
                params={k: v for k, v in params.items() if v is not None},
                timeout=httpx.Timeout(None, connect=5.0, read=idle),
            ) as response,
        ):
            if response.is_error:
                response.read()
                self._check(response)
            yield _until_idle(response.iter_lines())


def _until_idle(lines: Iterator[str]) -> Iterator[str]:
    with contextlib.suppress(httpx.ReadTimeout):
        yield from lines


_json = {"Content-Type": "application/json"}


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text.rsplit("] ", 1)[-1] if text else type(exc).__name__
