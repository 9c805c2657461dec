"""``lifecycle.toml``: which buildpack and platform APIs our lifecycle supports (document 002).

Loaded once at start and refused whole when anything is wrong: a platform that misreads which APIs
it supports stages apps it cannot run, so a bad file stops the process with a message that names
the file, the key and the value. From a descriptor come the image labels builders carry, and
:func:`check`, the one decision (exit code, warnings) about a platform and a buildpack API that
``lastbackend lifecycle check`` prints and staging records in its log.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import attrs

from lastbackend.lifecycle.apis import Apis, ApiVersionError, parse_version

Kind = Literal["buildpack", "platform"]
KINDS: tuple[Kind, ...] = ("buildpack", "platform")

LABEL_VERSION = "io.buildpacks.lifecycle.version"
LABEL_APIS = "io.buildpacks.lifecycle.apis"
LABEL_BUILDER = "io.buildpacks.builder.metadata"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_PLATFORM_API = 11
EXIT_BUILDPACK_API = 12
"""Upstream lifecycle's codes for an incompatible platform and buildpack API."""


class DescriptorError(ValueError):
    """A descriptor that cannot be used; the message starts with the file."""


@attrs.frozen
class Descriptor:
    version: str
    """The lifecycle's own version (``[lifecycle] version``)."""
    buildpack: Apis
    platform: Apis
    source: str = "<string>"
    """Where it was read from, for messages."""

    def apis(self, kind: Kind) -> Apis:
        return self.buildpack if kind == "buildpack" else self.platform

    def is_supported(self, kind: Kind, version: str) -> bool:
        return self.apis(kind).is_supported(version)

    def is_deprecated(self, kind: Kind, version: str) -> bool:
        return self.apis(kind).is_deprecated(version)


def default_path() -> Path:
    """The descriptor shipped inside the package, a copy of ``configs/lifecycle.toml``.

    Inside the package so that an installed lastbackend finds it as surely as a checkout: a
    path relative to the repository exists only in a checkout. A test keeps the copies equal.
    """
    return Path(str(resources.files("lastbackend.lifecycle").joinpath("lifecycle.toml")))


def load(path: Path | None = None) -> Descriptor:
    path = path or default_path()
    try:
        text = path.read_text()
    except OSError as exc:
        raise DescriptorError(f"{path}: cannot read the lifecycle descriptor: {exc}") from None
    return loads(text, source=str(path))


def loads(text: str, source: str = "<string>") -> Descriptor:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DescriptorError(f"{source}: not valid TOML: {exc}") from None
    _only(data, {"apis", "lifecycle"}, source, "")
    apis = _table(data, "apis", source, "")
    _only(apis, set(KINDS), source, "apis.")
    lifecycle = _table(data, "lifecycle", source, "")
    _only(lifecycle, {"version"}, source, "lifecycle.")
    version = lifecycle.get("version")
    if not isinstance(version, str) or not version.strip() or version != version.strip():
        raise DescriptorError(
            f'{source}: lifecycle.version: must be a non-empty string like "0.9.0", got {version!r}'
        )
    parsed = {kind: _apis(apis, kind, source) for kind in KINDS}
    return Descriptor(version, parsed["buildpack"], parsed["platform"], source)


def _table(data: Mapping[str, Any], key: str, source: str, prefix: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        what = "missing" if value is None else f"must be a table, got {value!r}"
        raise DescriptorError(f"{source}: [{prefix}{key}] {what}")
    return value


def _only(data: Mapping[str, Any], allowed: set[str], source: str, prefix: str) -> None:
    for key in data:
        if key not in allowed:
            choices = ", ".join(sorted(prefix + a for a in allowed))
            raise DescriptorError(f"{source}: unknown key {prefix}{key} (allowed: {choices})")


def _apis(apis: Mapping[str, Any], kind: Kind, source: str) -> Apis:
    table = _table(apis, kind, source, "apis.")
    prefix = f"apis.{kind}."
    _only(table, {"supported", "deprecated"}, source, prefix)
    if "supported" not in table:
        raise DescriptorError(f"{source}: {prefix}supported: missing")
    lists = {}
    for key in ("supported", "deprecated"):
        value = table.get(key, [])
        if not isinstance(value, list):
            raise DescriptorError(
                f"{source}: {prefix}{key}: must be an array of strings, got {value!r}"
            )
        lists[key] = value
    try:
        return Apis.parse(lists["supported"], lists["deprecated"])
    except ApiVersionError as exc:
        raise DescriptorError(f"{source}: {prefix}{exc}") from None


def platform_api(descriptor: Descriptor, configured: str = "") -> str:
    """The platform API in force: the configured one, else the newest the descriptor supports."""
    return configured.strip() or str(descriptor.platform.latest())


# --- labels and the API's view ---------------------------------------------------------------


def _lists(apis: Apis) -> dict[str, list[str]]:
    return {
        "deprecated": [str(e) for e in apis.deprecated],
        "supported": [str(e) for e in apis.supported],
    }


def apis_label(descriptor: Descriptor) -> dict[str, dict[str, list[str]]]:
    """The ``io.buildpacks.lifecycle.apis`` value, before JSON encoding: the lists as written."""
    return {kind: _lists(descriptor.apis(kind)) for kind in KINDS}


def builder_metadata(descriptor: Descriptor) -> dict[str, Any]:
    """The lifecycle part of ``io.buildpacks.builder.metadata`` in its pre-002 shape.

    One version per kind, as old platforms read it: the earliest entry of ``supported``, as pack
    sets it. The builder adds its ``buildpacks``, ``stack`` and so on around this.
    """
    return {
        "lifecycle": {
            "version": descriptor.version,
            "api": {
                "buildpack": str(descriptor.buildpack.earliest()),
                "platform": str(descriptor.platform.earliest()),
            },
        }
    }


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def labels(descriptor: Descriptor, metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The labels a builder or stack image carries; ``metadata`` is the rest of the builder's."""
    return {
        LABEL_VERSION: descriptor.version,
        LABEL_APIS: _json(apis_label(descriptor)),
        LABEL_BUILDER: _json({**(metadata or {}), **builder_metadata(descriptor)}),
    }


def view(descriptor: Descriptor) -> dict[str, Any]:
    """What ``GET /api/lifecycle`` answers: the descriptor, every version it means, the labels."""
    expanded = {
        kind: {
            "deprecated": [str(v) for v in descriptor.apis(kind).expanded_deprecated()],
            "supported": [str(v) for v in descriptor.apis(kind).expanded_supported()],
        }
        for kind in KINDS
    }
    return {
        "lifecycle": {"version": descriptor.version},
        "apis": apis_label(descriptor),
        "expanded": expanded,
        "labels": labels(descriptor),
    }


# --- deprecation modes and the check -------------------------------------------------------------

Mode = Literal["warn", "error", "silent"]
MODES: tuple[Mode, ...] = ("warn", "error", "silent")
MODE_VARIABLES: Mapping[Kind, str] = {
    "platform": "CNB_PLATFORM_DEPRECATION_MODE",
    "buildpack": "CNB_BUILDPACK_DEPRECATION_MODE",
}
FALLBACK_VARIABLE = "CNB_DEPRECATION_MODE"
"""Upstream lifecycle's one variable for both kinds (``warn | error | quiet``)."""


def deprecation_mode(kind: Kind, environ: Mapping[str, str]) -> Mode:
    """The document's per-kind variable, else upstream's shared one, else ``warn``.

    An unknown value is refused (:class:`ValueError`): a typo of ``error`` must not turn a
    deliberate failure into a warning.
    """
    return _mode(kind, environ)[0]


def _mode(kind: Kind, environ: Mapping[str, str]) -> tuple[Mode, str | None]:
    """The mode and the variable that set it (``None``: the default)."""
    for name in (MODE_VARIABLES[kind], FALLBACK_VARIABLE):
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        value = raw.lower()
        if name == FALLBACK_VARIABLE and value == "quiet":
            value = "silent"
        for mode in MODES:
            if value == mode:
                return mode, name
        allowed = "warn, error or silent" + (" (or quiet)" if name == FALLBACK_VARIABLE else "")
        raise ValueError(f"{name}: must be {allowed}, got {raw!r}")
    return "warn", None


@attrs.frozen
class Result:
    exit_code: int
    warnings: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK


_CODES: Mapping[Kind, int] = {"platform": EXIT_PLATFORM_API, "buildpack": EXIT_BUILDPACK_API}


def check(
    descriptor: Descriptor,
    platform_api: str | None,
    buildpack_api: str | None,
    environ: Mapping[str, str],
) -> Result:
    """May a platform at ``platform_api`` run a buildpack at ``buildpack_api``? ``None`` skips one.

    Unsupported (or malformed) is exit 11 for the platform, 12 for the buildpack; a deprecated
    one warns, fails with the same code, or passes silently by its kind's deprecation mode. The
    platform is judged first, as the lifecycle does before it reads any buildpack.
    """
    warnings: list[str] = []
    requests: tuple[tuple[Kind, str | None], ...] = (
        ("platform", platform_api),
        ("buildpack", buildpack_api),
    )
    for kind, requested in requests:
        if requested is None:
            continue
        code, apis = _CODES[kind], descriptor.apis(kind)
        try:
            version = parse_version(requested)
        except ApiVersionError as exc:
            return Result(code, tuple(warnings), f"{kind} API {exc}")
        if not apis.is_supported(version):
            listed = ", ".join(str(v) for v in apis.expanded_supported())
            return Result(
                code,
                tuple(warnings),
                f"{kind} API {requested} is not supported by lifecycle {descriptor.version} "
                f"(supported: {listed})",
            )
        if not apis.is_deprecated(version):
            continue
        try:
            mode, variable = _mode(kind, environ)
        except ValueError as exc:
            return Result(EXIT_FAILED, tuple(warnings), str(exc))
        message = f"{kind} API {requested} is deprecated by lifecycle {descriptor.version}"
        if mode == "error":
            return Result(code, tuple(warnings), f"{message} ({variable}=error)")
        if mode == "warn":
            warnings.append(
                f"{message}; move to a newer one before support is removed "
                f"(set {MODE_VARIABLES[kind]}=silent to hide this warning)"
            )
    return Result(EXIT_OK, tuple(warnings))
