"""Secrets at rest: passwords and tokens are stored in etcd as Fernet tokens, never in clear.

Fernet (``cryptography``) is authenticated encryption (AES-128-CBC with HMAC-SHA256) with a
versioned, recognisable token: every token starts with ``gAAAAA``, so ``lastbackend tree`` masks
it and an admin reading keys with ``etcdctl`` sees ciphertext only. A token also cannot be
changed undetected: a tampered value fails to decrypt instead of decrypting to garbage.

Where the key comes from, first found wins:

1. ``secrets.key`` in the config file, or ``LB_SECRET_KEY``: the Fernet key itself;
2. the file ``secrets.key_file`` (default ``<data_dir>/secret.key``), created with mode 0600 on
   first use when missing.

**Every process must use the same key.** A value encrypted by one API process is decrypted by
another, or by a node agent pulling an image, so they all need the key that encrypted it. On one
host the data-dir file is shared by construction; on several hosts set ``LB_SECRET_KEY`` (or copy
the file) identically everywhere. Losing the key loses the stored secrets: they must be entered
again. An etcd backup holds ciphertext only, so back the key up separately.

Environment values (a service's ``config.env``, a droplet's ``environment_variables``, the
``env`` of pod specs and revisions) are encrypted value by value, the names left in clear so the
tree stays readable: :meth:`Secrets.seal_env` and :meth:`Secrets.open_env`. Unlike the write-only
secrets they are shown again, to admins; and a value written before they were encrypted (not a
token) still reads as itself, so an upgrade needs no migration: it is encrypted the next time its
map is written. Sealing keeps a stored token whose clear value is unchanged: a token is fresh
each time, and a new token for the same value would change the pod template, which rolls out.

Nothing here logs or puts a secret (or a key) into an exception message.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from lastbackend.codec import FieldError, Invalid
from lastbackend.config import Settings
from lastbackend.logsetup import log
from lastbackend.model.common import MASK

TOKEN_PREFIX = "gAAAAA"
"""How every Fernet token begins (version byte 0x80, then a timestamp): ciphertext at a glance."""


class SecretError(Exception):
    """A key could not be loaded, or a stored secret could not be decrypted with it."""


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


def is_token(value: str) -> bool:
    return value.startswith(TOKEN_PREFIX)


class Secrets:
    """Encrypts and decrypts text with one Fernet key; ``source`` names the key in messages."""

    def __init__(self, key: str | bytes, *, source: str = "the configured key") -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise SecretError(
                f"{source} is not a Fernet key (32 bytes in url-safe base64, 44 characters)"
            ) from None
        self.source = source

    @classmethod
    def from_settings(cls, settings: Settings) -> Secrets:
        """The configured key if there is one (no file is touched then), else the key file's."""
        if settings.secret_key:
            return cls(settings.secret_key, source="secrets.key (LB_SECRET_KEY)")
        path = settings.secret_key_path
        try:
            key = load_or_create_key(path)
        except OSError as exc:
            raise SecretError(f"cannot read or create the key file {path}: {exc}") from None
        return cls(key, source=f"the key file {path}")

    def encrypt(self, plaintext: str) -> str:
        """A fresh token each call (random IV): equal secrets do not look equal in etcd."""
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except (InvalidToken, UnicodeError):
            raise SecretError(
                f"a stored secret cannot be decrypted with {self.source}: it was encrypted with "
                "another key, or the value is corrupt. Every lastbackend process must share one "
                "key (secrets.key / LB_SECRET_KEY, or the same secret.key file)"
            ) from None

    def open(self, value: str) -> str:
        """A stored environment value in clear: a token decrypted, a value from before
        encryption (not a token) as it is."""
        return self.decrypt(value) if is_token(value) else value

    def open_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """A stored environment map in clear (what a container is started with)."""
        return {name: self.open(value) for name, value in env.items()}

    def seal_env(
        self,
        env: Mapping[str, str],
        stored: Mapping[str, str] | None = None,
        *,
        field: str = "environment_variables",
    ) -> dict[str, str]:
        """``env`` (clear values from a request) as it is stored: each value a token.

        A value the stored map already holds, as the same token or as a token of the same clear
        value, keeps its token, so rewriting an unchanged map changes nothing. Anything else is
        taken as clear text, never as a token to trust: a token copied from elsewhere in the
        tree is encrypted again, not decrypted into a readable value. ``***`` (how read-only
        callers see values) is refused unless it is the stored value: it would overwrite one.
        """
        stored = stored or {}
        out: dict[str, str] = {}
        for name, value in env.items():
            old = stored.get(name)
            if old is not None and is_token(old) and (old == value or self._holds(old, value)):
                out[name] = old
            elif value == MASK:
                raise Invalid(
                    [
                        FieldError(
                            f"{field}[{name!r}]",
                            f"{MASK!r} is how values are hidden from read-only tokens; "
                            "send the real value",
                        )
                    ]
                )
            else:
                out[name] = self.encrypt(value)
        return out

    def _holds(self, token: str, clear: str) -> bool:
        try:
            return hmac.compare_digest(self.decrypt(token).encode(), clear.encode())
        except SecretError:
            return False


def load_or_create_key(path: Path) -> bytes:
    """Read the key file, creating it (mode 0600) with a new key if it does not exist.

    Several processes may start at once on one data dir: each writes its candidate to a private
    temporary file and hard-links it into place, which never replaces an existing file, so all
    of them end up reading the one key that won.
    """
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, Fernet.generate_key() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        log.info("created secret key file", path=str(path))
    except FileExistsError:
        pass  # another process won the race: use its key
    finally:
        tmp.unlink()
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & 0o077:
        log.warning("secret key file is readable by other users; chmod 600 it", path=str(path))
    return path.read_bytes().strip()
