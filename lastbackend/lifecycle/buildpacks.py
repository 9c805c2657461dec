"""The buildpacks staging can use: the built-in ones and an admin's extras, in detection order.

A buildpack is a directory with ``buildpack.toml`` (``api`` and ``[buildpack] id, version,
name``) and ``bin/detect`` and ``bin/build`` executables, following the buildpack contract:
``bin/detect <platform> <plan>`` exits 0 to pass, 100 to fail, anything else is an error;
``bin/build <layers> <platform> <plan>`` writes ``<layers>/launch.toml`` with ``[[processes]]``.
Both run in the app directory, in a container of the stack's build image (see
:mod:`~lastbackend.lifecycle.staging`).

Detection order: the extras in ``staging.buildpacks_dir`` first (one directory each, by directory
name, so ``10-ruby`` comes before ``20-node``), then the built-in :data:`BUILTIN_ORDER`:
``python`` and ``node`` first, since an app with dependencies needs them installed whatever runs
it (its Procfile's processes still win over theirs); then ``procfile`` before ``static``, because
a Procfile is the app saying how it runs, while an ``index.html`` is only a hint (an app with
both is an app that happens to ship a page; its Procfile's ``web`` is what it means to run).
The first to pass wins. An extra with the id of a later buildpack shadows it, and the shadowed
one is reported, so replacing a built-in is a matter of shipping one with its id.

A directory that is not a valid buildpack is skipped and reported as a :class:`Problem` naming
its file and the reason; one bad extra never hides the others. Whether a buildpack's ``api`` is
*supported* is not judged here but when it stages (exit 12, by the lifecycle descriptor), so
``GET /api/buildpacks`` can show an unsupported one with its status.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, overload

import attrs

from lastbackend import codec
from lastbackend.lifecycle.apis import ApiVersionError, parse_version
from lastbackend.lifecycle.contract import TargetSpec, implemented, parse_stacks, parse_targets
from lastbackend.lifecycle.descriptor import Descriptor
from lastbackend.model.apps import check_buildpack
from lastbackend.model.buildpacks import (
    ApiStatus,
    BuildpackCatalog,
    BuildpackProblem,
    BuildpackView,
)

BUILTIN_ORDER = ("python", "node", "procfile", "static")
"""The built-in buildpacks' ids in detection order (see the module docstring for why)."""
DESCRIPTOR = "buildpack.toml"
EXECUTABLES = ("bin/detect", "bin/build")


class BuildpackError(ValueError):
    """A directory that is not a usable buildpack; ``file`` and ``reason`` say where and why."""

    def __init__(self, file: Path, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason


@attrs.frozen
class Buildpack:
    id: str
    version: str
    name: str
    api: str
    """The buildpack API its ``buildpack.toml`` declares (judged by the descriptor at staging)."""
    path: Path
    """Its directory: ``buildpack.toml`` and ``bin/`` are read from here."""
    homepage: str = ""
    builtin: bool = False
    targets: tuple[TargetSpec, ...] = ()
    """``[[targets]]`` (buildpack API 0.10+): where it can run; none means any Linux."""
    stacks: tuple[str, ...] = ()
    """The ids of the deprecated ``[[stacks]]`` (judged only when there are no targets)."""
    clear_env: bool = False
    """``buildpack.clear-env``: the user's variables only as files in ``<platform>/env/``."""
    detects: str = ""
    """``[metadata] detects``: what ``bin/detect`` looks for, in words ("package.json"), so
    that "no buildpack detected" can say it; empty when the buildpack does not say."""

    @property
    def looks_for(self) -> str:
        """:attr:`detects`, or where to look when it is empty: what "no buildpack detected"
        lists for it, and ``GET /api/buildpacks`` shows."""
        return self.detects or "see its bin/detect"

    @property
    def dirname(self) -> str:
        """Its directory name under ``/cnb/buildpacks/`` (ids may hold ``/``; paths may not)."""
        return self.id.replace("/", "_")


@attrs.frozen
class Problem:
    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@attrs.frozen
class Catalog(Sequence[Buildpack]):
    """The usable buildpacks in detection order (it *is* that sequence), and what was skipped."""

    buildpacks: tuple[Buildpack, ...] = ()
    problems: tuple[Problem, ...] = ()

    @overload
    def __getitem__(self, index: int) -> Buildpack: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Buildpack]: ...
    def __getitem__(self, index: int | slice) -> Buildpack | Sequence[Buildpack]:
        return self.buildpacks[index]

    def __len__(self) -> int:
        return len(self.buildpacks)

    def __iter__(self) -> Iterator[Buildpack]:
        return iter(self.buildpacks)


def builtin_dir() -> Path:
    """The buildpacks shipped in the package (like the descriptor, found in any install)."""
    return Path(str(resources.files("lastbackend.lifecycle").joinpath("buildpacks")))


def load(directory: Path, *, builtin: bool = False) -> Buildpack:
    """One buildpack directory, validated; :class:`BuildpackError` says which file and why."""
    file = directory / DESCRIPTOR
    try:
        data = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise BuildpackError(
            file, "missing: a buildpack directory needs a buildpack.toml"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildpackError(file, f"cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BuildpackError(file, f"not valid TOML: {exc}") from None
    if "order" in data:
        raise BuildpackError(
            file, "[[order]]: meta-buildpacks (groups of others) are not supported"
        )
    api = data.get("api")
    try:
        parse_version(api)
    except ApiVersionError as exc:
        raise BuildpackError(file, f"api: {exc}") from None
    table = data.get("buildpack")
    if not isinstance(table, dict):
        raise BuildpackError(file, "[buildpack]: missing (it holds id, version and name)")
    fields = {key: _string(file, table, key) for key in ("id", "version", "name", "homepage")}
    if not fields["id"]:
        raise BuildpackError(file, "buildpack.id: missing")
    try:
        check_buildpack(fields["id"])
    except ValueError as exc:
        raise BuildpackError(file, f"buildpack.id: {exc}") from None
    if not fields["version"]:
        raise BuildpackError(file, 'buildpack.version: missing (a string like "1.0.0")')
    clear_env = table.get("clear-env", False)
    if not isinstance(clear_env, bool):
        raise BuildpackError(file, f"buildpack.clear-env: must be true or false, got {clear_env!r}")
    try:
        targets, stacks = parse_targets(data), parse_stacks(data)
    except ValueError as exc:
        raise BuildpackError(file, str(exc)) from None
    metadata = data.get("metadata", {})
    detects = metadata.get("detects", "") if isinstance(metadata, dict) else ""
    if not isinstance(detects, str):
        raise BuildpackError(file, f"metadata.detects: must be a string, got {detects!r}")
    for name in EXECUTABLES:
        executable = directory / name
        if not executable.is_file():
            raise BuildpackError(
                executable, "missing: every buildpack has bin/detect and bin/build"
            )
    return Buildpack(
        id=fields["id"],
        version=fields["version"],
        name=fields["name"] or fields["id"],
        api=str(api),
        path=directory,
        homepage=fields["homepage"],
        builtin=builtin,
        targets=targets,
        stacks=stacks,
        clear_env=clear_env,
        detects=detects.strip(),
    )


def _string(file: Path, table: dict[str, Any], key: str) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise BuildpackError(file, f"buildpack.{key}: must be a string, got {value!r}")
    return value.strip()


def discover(extra_dir: Path | None = None) -> Catalog:
    """Every buildpack in detection order: ``extra_dir``'s (by name), then the built-in ones."""
    found: list[Buildpack] = []
    problems: list[Problem] = []

    def add(directory: Path, builtin: bool) -> None:
        try:
            buildpack = load(directory, builtin=builtin)
        except BuildpackError as exc:
            problems.append(Problem(str(exc.file), exc.reason))
            return
        first = next((b for b in found if b.id == buildpack.id), None)
        if first is not None:
            problems.append(
                Problem(
                    str(directory / DESCRIPTOR),
                    f"buildpack {buildpack.id} is also in {first.path}, which comes first in "
                    "detection order; this one is not used",
                )
            )
            return
        found.append(buildpack)

    if extra_dir is not None:
        if not extra_dir.is_dir():
            problems.append(Problem(str(extra_dir), "staging.buildpacks_dir: not a directory"))
        else:
            for directory in sorted(p for p in extra_dir.iterdir() if p.is_dir()):
                add(directory, builtin=False)
    shipped = builtin_dir()
    rest = sorted(p.name for p in shipped.iterdir() if p.is_dir() and p.name not in BUILTIN_ORDER)
    for name in (*BUILTIN_ORDER, *rest):
        if (shipped / name).is_dir():
            add(shipped / name, builtin=True)
    return Catalog(tuple(found), tuple(problems))


def find(buildpacks: Sequence[Buildpack], requested: str) -> Buildpack | None:
    """The buildpack a lifecycle names (by id), or ``None``."""
    return next((b for b in buildpacks if b.id == requested), None)


def api_status(descriptor: Descriptor, api: str) -> ApiStatus:
    """``supported``, ``deprecated`` or ``unsupported`` by this lifecycle (document 002).

    Unsupported too: an API the descriptor lists but the engine does not implement
    (:data:`~lastbackend.lifecycle.contract.IMPLEMENTED`), since staging refuses it the same way.
    """
    if not implemented(api):
        return "unsupported"
    try:
        if descriptor.is_deprecated("buildpack", api):
            return "deprecated"
        return "supported" if descriptor.is_supported("buildpack", api) else "unsupported"
    except ApiVersionError:
        return "unsupported"


def view(catalog: Catalog, descriptor: Descriptor) -> dict[str, Any]:
    """What ``GET /api/buildpacks`` answers (a :class:`BuildpackCatalog`): the buildpacks in
    detection order, and problems.

    ``position`` is the 1-based detection order; ``api_status`` what staging will make of the
    buildpack's API (an ``unsupported`` one fails with exit 12 when it is chosen); ``detects``
    what its detection looks for, the words "no buildpack detected" quotes.
    """
    answer = BuildpackCatalog(
        buildpacks=[
            BuildpackView(
                id=b.id,
                version=b.version,
                name=b.name,
                api=b.api,
                api_status=api_status(descriptor, b.api),
                homepage=b.homepage,
                builtin=b.builtin,
                position=position,
                detects=b.looks_for,
            )
            for position, b in enumerate(catalog, start=1)
        ],
        problems=[BuildpackProblem(file=p.file, reason=p.reason) for p in catalog.problems],
    )
    return dict(codec.unstructure(answer))
