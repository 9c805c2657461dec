"""What builds and staging take from their host to reach package registries the way it does.

Many installs sit behind a TLS-inspecting proxy: without the host's CA bundle a ``pip install``
in a container fails certificate verification, and without the host's proxy variables it
cannot get out at all. Buildpack staging (``controllers/staging.py``) and Dockerfile builds
(``controllers/builds.py``) hand their containers the same two things, read here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class CABundleError(Exception):
    """``staging.ca_certificates`` names a file that cannot be read; the message says why."""


def ca_bundle(configured: Path | None) -> bytes | None:
    """``staging.ca_certificates``, else the host's bundle when there is one (blocking I/O)."""
    path = configured or (HOST_CA_BUNDLE if HOST_CA_BUNDLE.is_file() else None)
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CABundleError(
            f"staging.ca_certificates: cannot read {path}: {exc.strerror}"
        ) from None


def build_env(names: Iterable[str]) -> dict[str, str]:
    """The variables of ``staging.build_env`` that are set on this host, with their values."""
    return {name: os.environ[name] for name in names if name in os.environ}
