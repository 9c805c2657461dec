"""What ``GET /api/buildpacks`` answers: the buildpack catalog as staging will use it.

A view, never stored: built by :func:`lastbackend.lifecycle.buildpacks.view` from the catalog
and the descriptor, and the source of the OpenAPI schema of that route.
"""

from __future__ import annotations

from typing import Literal

import attrs

ApiStatus = Literal["supported", "deprecated", "unsupported"]


@attrs.frozen
class BuildpackView:
    id: str
    version: str
    name: str
    api: str
    """The buildpack API its ``buildpack.toml`` declares."""
    api_status: ApiStatus
    """What staging will make of ``api``: an ``unsupported`` one fails with exit 12."""
    homepage: str
    builtin: bool
    position: int
    """Its place in detection order, from 1."""
    detects: str
    """What its detection looks for, in words (its ``[metadata] detects``), exactly as the
    "no buildpack detected" staging error lists it; ``see its bin/detect`` when it does not say."""


@attrs.frozen
class BuildpackProblem:
    file: str
    reason: str


@attrs.frozen
class BuildpackCatalog:
    buildpacks: list[BuildpackView]
    """In detection order."""
    problems: list[BuildpackProblem]
    """The directories skipped, each with its file and why."""
