"""``lastbackend.yml``: the subset of Cloud Foundry's ``manifest.yml`` that ``push`` reads.

```yaml
applications:
- name: web
  path: site            # relative to the manifest
  instances: 2
  memory: 256M          # M or G (CF's units), or a number of MB
  env: {GREETING: hi}
  routes: [{route: www.example.com}]
  buildpacks: [static]  # the first one is used
  docker: {image: registry.local/web:1, username: deploy}
  health-check-type: http          # port, http or process
  health-check-http-endpoint: /healthz
```

Any other key is an error that names it (CF ignores some; a typo silently ignored is worse).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
import yaml

NAMES = ("lastbackend.yml", "lastbackend.yaml")
APP_KEYS = frozenset(
    {
        "name",
        "path",
        "instances",
        "memory",
        "env",
        "routes",
        "buildpacks",
        "docker",
        "health-check-type",
        "health-check-http-endpoint",
    }
)
HEALTH_TYPES = ("port", "http", "process")


class ManifestError(Exception):
    """A manifest that cannot be used; the message names the file and the key."""


@attrs.frozen
class AppSpec:
    """One app to push: from a manifest entry, then the command line's flags over it."""

    name: str
    path: Path
    instances: int | None = None
    memory: int | None = None
    env: dict[str, str] = attrs.Factory(dict)
    domains: tuple[str, ...] = ()
    buildpack: str | None = None
    docker_image: str | None = None
    docker_username: str | None = None
    health_check_type: str | None = None
    health_check_endpoint: str | None = None


def find(directory: Path) -> Path | None:
    for name in NAMES:
        if (directory / name).is_file():
            return directory / name
    return None


def memory_mb(value: Any, where: str) -> int:
    """``256M``, ``1G``, ``512MB`` or a plain number of MB."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*(\d+)\s*(M|MB|G|GB)?\s*", str(value), re.IGNORECASE)
    if match is None:
        raise ManifestError(f"{where}: {value!r} is not a memory size like 256M or 1G")
    number, unit = int(match[1]), (match[2] or "M").upper()
    return number * 1024 if unit.startswith("G") else number


def load(path: Path) -> list[AppSpec]:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"{path}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("applications"), list):
        raise ManifestError(f"{path}: applications: a list of apps is required")
    unknown = sorted(set(document) - {"applications"})
    if unknown:
        raise ManifestError(f"{path}: unknown keys {', '.join(unknown)} (known: applications)")
    return [_app(entry, i, path) for i, entry in enumerate(document["applications"])]


def _app(entry: Any, index: int, path: Path) -> AppSpec:
    where = f"{path}: applications[{index}]"
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: an app is a mapping")
    unknown = sorted(set(entry) - APP_KEYS)
    if unknown:
        raise ManifestError(
            f"{where}: unknown keys {', '.join(map(str, unknown))} "
            f"(known: {', '.join(sorted(APP_KEYS))})"
        )
    if not isinstance(entry.get("name"), str) or not entry["name"]:
        raise ManifestError(f"{where}.name: required, a string")
    env = entry.get("env") or {}
    if not isinstance(env, dict):
        raise ManifestError(f"{where}.env: a mapping of names to values")
    routes = entry.get("routes") or []
    if not isinstance(routes, list) or not all(
        isinstance(r, dict) and set(r) == {"route"} for r in routes
    ):
        raise ManifestError(f"{where}.routes: a list of {{route: HOST}}")
    buildpacks = entry.get("buildpacks") or []
    if not isinstance(buildpacks, list):
        raise ManifestError(f"{where}.buildpacks: a list of buildpack names")
    docker = entry.get("docker") or {}
    if not isinstance(docker, dict) or set(docker) - {"image", "username"}:
        raise ManifestError(f"{where}.docker: {{image, username}}")
    health = entry.get("health-check-type")
    if health is not None and health not in HEALTH_TYPES:
        raise ManifestError(f"{where}.health-check-type: one of {', '.join(HEALTH_TYPES)}")
    instances = entry.get("instances")
    if instances is not None and (not isinstance(instances, int) or isinstance(instances, bool)):
        raise ManifestError(f"{where}.instances: a number")
    return AppSpec(
        name=entry["name"],
        path=(path.parent / str(entry.get("path", "."))).resolve(),
        instances=instances,
        memory=memory_mb(entry["memory"], f"{where}.memory") if "memory" in entry else None,
        env={str(k): "" if v is None else str(v) for k, v in env.items()},
        domains=tuple(str(r["route"]) for r in routes),
        buildpack=str(buildpacks[0]) if buildpacks else None,
        docker_image=docker.get("image"),
        docker_username=docker.get("username"),
        health_check_type=health,
        health_check_endpoint=entry.get("health-check-http-endpoint"),
    )
