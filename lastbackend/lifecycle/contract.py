"""The Cloud Native Buildpacks buildpack API, 0.7 to 0.12: what a buildpack gets and gives.

Pure decisions, no containers: the staging engine (:mod:`.staging`) runs ``bin/detect`` and
``bin/build`` and hands what they wrote to these functions. Per buildpack API version:

- **Arguments** (every version): ``bin/detect <platform> <plan>`` and
  ``bin/build <layers> <platform> <plan>``, run in the app directory.
- **Environment** (:func:`phase_env`): ``CNB_BUILDPACK_DIR`` always; from 0.8 ``CNB_PLATFORM_DIR``
  and ``CNB_BUILD_PLAN_PATH`` (detect) or ``CNB_PLATFORM_DIR``, ``CNB_BP_PLAN_PATH`` and
  ``CNB_LAYERS_DIR`` (build), since 0.8 deprecates the positional arguments; from 0.10 the run
  image's target as ``CNB_TARGET_OS``, ``CNB_TARGET_ARCH`` and, when known,
  ``CNB_TARGET_ARCH_VARIANT``, ``CNB_TARGET_DISTRO_NAME``, ``CNB_TARGET_DISTRO_VERSION``; from
  0.12 the execution environment ``CNB_EXEC_ENV`` (``production``). The user's variables
  (``<platform>/env/``) are in the environment too unless ``buildpack.clear-env = true``.
- **Compatibility** (:func:`incompatibility`): ``[[targets]]`` (0.10+; every field optional, an
  empty or ``*`` field matches anything) must include the run image's target; without targets,
  the deprecated ``[[stacks]]`` must name the stack id or ``*``; with neither, any Linux stack.
- **Build plan** (:func:`resolve_plan`): ``[[provides]]`` and ``[[requires]]``, with ``[[or]]``
  alternatives. Each buildpack is its own group here, so an alternative is satisfied when what
  it provides is exactly what it requires; the requires of the first satisfied one become the
  Buildpack Plan's ``[[entries]]`` given to ``bin/build``.
- **Layers** (:func:`read_layers`): ``<layers>/<layer>.toml`` with ``[types] launch``,
  ``build``, ``cache`` (unset means false; a layer with none set is ignored). Launch layers go in
  the droplet image, cache layers are what a later staging may restore, and their ``env/``,
  ``env.launch/`` and ``env.launch/<process>/`` directories (``.override`` the default suffix,
  ``.default``, ``.append``, ``.prepend``, ``.delim``) plus ``bin/`` on ``PATH`` and ``lib/`` on
  ``LD_LIBRARY_PATH`` make the app's environment (:func:`launch_env`).
- **Processes** (:func:`parse_launch`): ``launch.toml`` ``[[processes]]`` with ``type``,
  ``command`` (a string run by a shell unless ``direct = true`` before 0.9; an argv array from
  0.9, the shell gone), ``args``, ``default`` and, from 0.8, ``working-dir``; ``[[labels]]``
  become image labels. ``build.toml`` ``[[unmet]]`` names plan entries the buildpack did not
  meet (:func:`parse_build`).
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from lastbackend.lifecycle.apis import ApiVersionError, Version, parse_version

IMPLEMENTED: tuple[Version, ...] = tuple(Version(0, minor) for minor in range(7, 13))
"""The buildpack APIs this engine implements; the shipped ``lifecycle.toml`` lists exactly these."""

EXEC_ENV = "production"
_PROCESS_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LAYER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SUFFIXES = ("override", "default", "append", "prepend", "delim")
_RESERVED = {"launch", "build", "store"}
"""``<layers>/<name>.toml`` files that are not layers."""


def implemented(api: str) -> bool:
    """Whether the engine knows this buildpack API's contract."""
    try:
        return parse_version(api) in IMPLEMENTED
    except ApiVersionError:
        return False


def _at_least(api: str, minor: int) -> bool:
    try:
        return parse_version(api) >= Version(0, minor)
    except ApiVersionError:
        return False


# -- targets and stacks ------------------------------------------------------------------------


@attrs.frozen
class Target:
    """Where the app will run: the run image's OS, architecture and distribution."""

    os: str = "linux"
    arch: str = "amd64"
    variant: str = ""
    distro_name: str = ""
    distro_version: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.arch}" + (f"/{self.variant}" if self.variant else "")
        if self.distro_name:
            text += f" ({self.distro_name} {self.distro_version})".rstrip()
        return text


@attrs.frozen
class TargetSpec:
    """One ``[[targets]]`` entry of a ``buildpack.toml``; empty fields match anything."""

    os: str = ""
    arch: str = ""
    variant: str = ""
    distros: tuple[tuple[str, str], ...] = ()
    """``(name, version)`` pairs of ``[[targets.distros]]``; a version may be empty."""

    def matches(self, target: Target) -> bool:
        for want, have in ((self.os, target.os), (self.arch, target.arch)):
            if not _wild(want, have):
                return False
        if self.variant and target.variant and not _wild(self.variant, target.variant):
            return False
        if not self.distros or not target.distro_name:
            return True
        return any(
            _wild(name, target.distro_name) and _wild(version, target.distro_version)
            for name, version in self.distros
        )

    def __str__(self) -> str:
        text = f"{self.os or '*'}/{self.arch or '*'}" + (f"/{self.variant}" if self.variant else "")
        if self.distros:
            text += " (" + ", ".join(f"{n} {v}".strip() for n, v in self.distros) + ")"
        return text


def _wild(want: str, have: str) -> bool:
    return want in ("", "*") or want == have


def parse_targets(data: Mapping[str, Any]) -> tuple[TargetSpec, ...]:
    """``[[targets]]`` of a ``buildpack.toml``; :class:`ValueError` names the bad field."""
    raw = data.get("targets", [])
    if not isinstance(raw, list):
        raise ValueError("targets: must be an array of tables ([[targets]])")
    found = []
    for index, entry in enumerate(raw):
        where = f"targets[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be a table")
        fields = {}
        for key in ("os", "arch", "variant"):
            value = entry.get(key, "")
            if not isinstance(value, str):
                raise ValueError(f"{where}.{key}: must be a string, got {value!r}")
            fields[key] = value.strip()
        distros = entry.get("distros", [])
        if not isinstance(distros, list):
            raise ValueError(f"{where}.distros: must be an array of tables ([[targets.distros]])")
        pairs = []
        for number, distro in enumerate(distros):
            if not isinstance(distro, dict):
                raise ValueError(f"{where}.distros[{number}]: must be a table")
            name, version = distro.get("name", ""), distro.get("version", "")
            if not isinstance(name, str) or not isinstance(version, str):
                raise ValueError(f"{where}.distros[{number}]: name and version are strings")
            pairs.append((name.strip(), version.strip()))
        found.append(TargetSpec(distros=tuple(pairs), **fields))
    return tuple(found)


def parse_stacks(data: Mapping[str, Any]) -> tuple[str, ...]:
    """The ids of the deprecated ``[[stacks]]``; :class:`ValueError` names the bad field."""
    raw = data.get("stacks", [])
    if not isinstance(raw, list):
        raise ValueError("stacks: must be an array of tables ([[stacks]])")
    ids = []
    for index, entry in enumerate(raw):
        stack_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(stack_id, str) or not stack_id.strip():
            raise ValueError(f"stacks[{index}].id: must be a non-empty string")
        ids.append(stack_id.strip())
    return tuple(ids)


def incompatibility(
    targets: Sequence[TargetSpec], stack_ids: Sequence[str], target: Target, stack: str
) -> str | None:
    """Why a buildpack cannot run on this stack (``None``: it can), by the module's rules."""
    if targets:
        if any(spec.matches(target) for spec in targets):
            return None
        listed = "; ".join(str(spec) for spec in targets)
        return f"its targets ({listed}) do not include {target}"
    if stack_ids:
        if "*" in stack_ids or stack in stack_ids:
            return None
        return f"its stacks ({', '.join(stack_ids)}) do not include {stack}"
    if target.os != "linux":
        return f"it declares no targets, which means linux, and the stack is {target.os}"
    return None


# -- the environment of bin/detect and bin/build -----------------------------------------------


def phase_env(
    api: str,
    phase: str,
    *,
    buildpack_dir: str,
    platform_dir: str,
    plan_path: str,
    layers_dir: str = "",
    target: Target | None = None,
) -> dict[str, str]:
    """The ``CNB_*`` variables buildpack API ``api`` gives ``bin/<phase>`` (detect or build)."""
    env = {"CNB_BUILDPACK_DIR": buildpack_dir}
    if _at_least(api, 8):
        env["CNB_PLATFORM_DIR"] = platform_dir
        if phase == "detect":
            env["CNB_BUILD_PLAN_PATH"] = plan_path
        else:
            env["CNB_BP_PLAN_PATH"] = plan_path
            env["CNB_LAYERS_DIR"] = layers_dir
    if _at_least(api, 10) and target is not None:
        env["CNB_TARGET_OS"] = target.os
        env["CNB_TARGET_ARCH"] = target.arch
        for key, value in (
            ("CNB_TARGET_ARCH_VARIANT", target.variant),
            ("CNB_TARGET_DISTRO_NAME", target.distro_name),
            ("CNB_TARGET_DISTRO_VERSION", target.distro_version),
        ):
            if value:
                env[key] = value
    if _at_least(api, 12):
        env["CNB_EXEC_ENV"] = EXEC_ENV
    return env


def env_script(exports: Mapping[str, str], unset: Iterable[str] = ()) -> str:
    """A POSIX sh fragment that sets ``exports`` and unsets ``unset`` (sourced by our scripts)."""
    lines = [f"unset {name}" for name in sorted(set(unset)) if _ENV_NAME.fullmatch(name)]
    lines += [
        f"export {key}={shlex.quote(value)}"
        for key, value in exports.items()
        if _ENV_NAME.fullmatch(key)
    ]
    return "".join(line + "\n" for line in lines)


# -- the build plan ----------------------------------------------------------------------------


@attrs.frozen
class Entry:
    """A Buildpack Plan entry: a require's name and metadata."""

    name: str
    metadata: Mapping[str, Any] = attrs.field(factory=dict)


def resolve_plan(text: str) -> tuple[list[Entry], str | None]:
    """The entries of the first satisfied alternative, or ``([], reason)`` when none is.

    ``text`` is what ``bin/detect`` wrote to ``<plan>`` (empty: nothing provided or required).
    A plan that is not valid TOML is a reason too: the buildpack did not detect cleanly.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [], f"its build plan is not valid TOML: {exc}"
    alternatives = [data, *(data.get("or") or [])]
    reasons = []
    for index, alternative in enumerate(alternatives):
        where = "plan" if index == 0 else f"plan or[{index - 1}]"
        try:
            provides = _names(alternative, "provides", where)
            requires = _requires(alternative, where)
        except ValueError as exc:
            return [], str(exc)
        required = {entry.name for entry in requires}
        unprovided = sorted(required - provides)
        unrequired = sorted(provides - required)
        if not unprovided and not unrequired:
            return requires, None
        if unprovided:
            reasons.append(f"{where} requires {', '.join(unprovided)}, which nothing provides")
        else:
            reasons.append(f"{where} provides {', '.join(unrequired)}, which nothing requires")
    return [], "; ".join(reasons)


def _names(table: Any, key: str, where: str) -> set[str]:
    if not isinstance(table, dict):
        raise ValueError(f"its {where} is not a table")
    entries = table.get(key, [])
    if not isinstance(entries, list):
        raise ValueError(f"its {where}.{key}: must be an array of tables")
    names = set()
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"its {where}.{key}: every entry needs a name")
        names.add(name)
    return names


def _requires(table: dict[str, Any], where: str) -> list[Entry]:
    entries = table.get("requires", [])
    if not isinstance(entries, list):
        raise ValueError(f"its {where}.requires: must be an array of tables")
    found = []
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"its {where}.requires: every entry needs a name")
        metadata = entry.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError(f"its {where}.requires {name}: metadata must be a table")
        found.append(Entry(name, metadata))
    return found


def plan_toml(entries: Sequence[Entry]) -> str:
    """The Buildpack Plan file given to ``bin/build``: ``[[entries]]`` with inline metadata."""
    out = []
    for entry in entries:
        out.append(f"[[entries]]\nname = {_toml(entry.name)}\n")
        if entry.metadata:
            out.append(f"metadata = {_toml(dict(entry.metadata))}\n")
        out.append("\n")
    return "".join(out)


def _toml(value: Any) -> str:
    """An inline TOML value (strings, numbers, booleans, arrays and tables, as TOML parsed them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: the escapes are JSON's
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))  # dates and times: their text


# -- layers ------------------------------------------------------------------------------------


@attrs.frozen
class Layer:
    name: str
    launch: bool = False
    build: bool = False
    cache: bool = False

    @property
    def ignored(self) -> bool:
        return not (self.launch or self.build or self.cache)


def read_layers(files: Mapping[str, bytes]) -> list[Layer]:
    """The layers a buildpack declared, by name; ``files`` maps paths under its layers dir.

    :class:`ValueError` names a ``<layer>.toml`` that is not valid or has non-boolean types.
    """
    found = []
    for path in sorted(files):
        if "/" in path or not path.endswith(".toml"):
            continue
        name = path.removesuffix(".toml")
        if name in _RESERVED or not _LAYER_NAME.fullmatch(name):
            continue
        try:
            data = tomllib.loads(files[path].decode(errors="replace"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML: {exc}") from None
        types = data.get("types", {})
        if not isinstance(types, dict):
            raise ValueError(f"{path}: [types] must be a table")
        flags = {}
        for key in ("launch", "build", "cache"):
            value = types.get(key, False)
            if not isinstance(value, bool):
                raise ValueError(f"{path}: types.{key} must be true or false, got {value!r}")
            flags[key] = value
        found.append(Layer(name, **flags))
    return found


def apply_env_dir(env: dict[str, str], files: Mapping[str, bytes]) -> None:
    """Apply one env directory (file name -> content) to ``env``, in place, by the suffix rules.

    A file without a suffix overrides; ``.default`` sets only an unset variable; ``.append``
    and ``.prepend`` join with the value of ``<name>.delim`` (nothing when there is none).
    """
    delims = {
        name.removesuffix(".delim"): data.decode(errors="replace")
        for name, data in files.items()
        if name.endswith(".delim")
    }
    for name in sorted(files):
        variable, _, suffix = name.rpartition(".")
        if suffix not in _SUFFIXES:
            variable, suffix = name, "override"
        if suffix == "delim" or not _ENV_NAME.fullmatch(variable):
            continue
        value = files[name].decode(errors="replace")
        delim = delims.get(variable, "")
        current = env.get(variable)
        if suffix == "override":
            env[variable] = value
        elif suffix == "default":
            env.setdefault(variable, value)
        elif suffix == "append":
            env[variable] = value if not current else current + delim + value
        elif suffix == "prepend":
            env[variable] = value if not current else value + delim + current


def launch_env(
    base: Mapping[str, str],
    layers_dir: str,
    layers: Sequence[Layer],
    files: Mapping[str, bytes],
    process_types: Iterable[str] = (),
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The app's environment from the launch layers, and each process type's changes to it.

    ``base`` is the run image's; ``files`` maps paths under the buildpack's layers dir (as
    :func:`read_layers`) and ``layers_dir`` is that dir in the image (for ``bin/``, ``lib/``).
    Layers apply in name order, as the upstream launcher does.
    """
    env = dict(base)
    launched = [layer for layer in layers if layer.launch]
    for layer in launched:
        prefix = f"{layer.name}/"
        for sub, variable in (("bin", "PATH"), ("lib", "LD_LIBRARY_PATH")):
            present = f"{prefix}{sub}" in files
            if present or any(path.startswith(f"{prefix}{sub}/") for path in files):
                here = posixpath.join(layers_dir, layer.name, sub)
                env[variable] = here if not env.get(variable) else f"{here}:{env[variable]}"
        for directory in ("env", "env.launch"):
            apply_env_dir(env, _dir(files, f"{prefix}{directory}/"))
    per_process: dict[str, dict[str, str]] = {}
    for kind in process_types:
        changed = dict(env)
        for layer in launched:
            apply_env_dir(changed, _dir(files, f"{layer.name}/env.launch/{kind}/"))
        diff = {k: v for k, v in changed.items() if env.get(k) != v}
        if diff:
            per_process[kind] = diff
    return env, per_process


def _dir(files: Mapping[str, bytes], prefix: str) -> dict[str, bytes]:
    """The regular files directly in ``prefix`` (a directory path ending in ``/``)."""
    return {
        path[len(prefix) :]: data
        for path, data in files.items()
        if path.startswith(prefix) and "/" not in path[len(prefix) :] and path != prefix
    }


# -- launch.toml and build.toml ----------------------------------------------------------------


@attrs.frozen
class Process:
    type: str
    command: tuple[str, ...]
    """An argv (direct), or one shell line (not direct: before buildpack API 0.9 only)."""
    args: tuple[str, ...] = ()
    direct: bool = True
    default: bool = False
    working_dir: str = ""

    @property
    def line(self) -> str:
        """The process as one shell line, as it is shown and stored (``process_types``).

        A direct ``sh -c '<line>'`` with no arguments is shown as ``<line>``: the image runs
        every process with ``/bin/sh -c`` anyway.
        """
        if not self.direct:
            return " ".join([self.command[0], *(shlex.quote(a) for a in self.args)])
        if self._sh_line:
            return self.command[2]
        return shlex.join([*self.command, *self.args])

    @property
    def _sh_line(self) -> bool:
        argv = [*self.command, *self.args]
        return len(argv) == 3 and argv[0] in ("sh", "/bin/sh") and argv[1] == "-c"

    def shell(self, env: Mapping[str, str] | None = None) -> str:
        """What ``/bin/sh -c`` runs: the process's own variables, its directory, the command."""
        parts = [f"export {k}={shlex.quote(v)};" for k, v in (env or {}).items()]
        if self.working_dir:
            parts.append(f"cd {shlex.quote(self.working_dir)} &&")
        parts.append(("exec " if self.direct and not self._sh_line else "") + self.line)
        return " ".join(parts)


@attrs.frozen
class Launch:
    processes: tuple[Process, ...] = ()
    labels: Mapping[str, str] = attrs.field(factory=dict)
    warnings: tuple[str, ...] = ()


def parse_launch(text: str, api: str) -> Launch:
    """``launch.toml`` by buildpack API ``api``; :class:`ValueError` names what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML: {exc}") from None
    processes = data.get("processes", [])
    if not isinstance(processes, list):
        raise ValueError("processes: must be an array of tables ([[processes]])")
    arrays = _at_least(api, 9)
    found: list[Process] = []
    warnings: list[str] = []
    for index, process in enumerate(processes):
        where = f"processes[{index}]"
        if not isinstance(process, dict):
            raise ValueError(f"{where}: must be a table")
        kind, command, args = process.get("type"), process.get("command"), process.get("args", [])
        if not isinstance(kind, str) or not _PROCESS_TYPE.fullmatch(kind):
            raise ValueError(f"{where}.type: must be a name like 'web', got {kind!r}")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError(f"{where}.args: must be an array of strings")
        if _at_least(api, 12) and not _for_exec_env(process.get("exec-env")):
            continue
        direct = True
        if arrays:
            if not (
                isinstance(command, list) and command and all(isinstance(c, str) for c in command)
            ):
                raise ValueError(
                    f"{where}.command: buildpack API {api} wants an array of strings, like "
                    '["/bin/sh", "-c", "..."] (a string command ended with API 0.9)'
                )
            argv = tuple(command)
        else:
            if not isinstance(command, str) or not command.strip():
                raise ValueError(
                    f"{where}.command: buildpack API {api} wants a non-empty string (arrays "
                    "came with API 0.9)"
                )
            direct = process.get("direct", False)
            if not isinstance(direct, bool):
                raise ValueError(f"{where}.direct: must be true or false")
            argv = (command.strip(),)
        default = process.get("default", False)
        if not isinstance(default, bool):
            raise ValueError(f"{where}.default: must be true or false")
        working_dir = process.get("working-dir", "")
        if not isinstance(working_dir, str):
            raise ValueError(f"{where}.working-dir: must be a string")
        if working_dir and not _at_least(api, 8):
            warnings.append(
                f"process {kind}: working-dir came with buildpack API 0.8; ignored for {api}"
            )
            working_dir = ""
        found.append(Process(kind, argv, tuple(args), direct, default, working_dir))
    defaults = [p.type for p in found if p.default]
    if len(defaults) > 1:
        raise ValueError(f"only one process may be the default, not {', '.join(defaults)}")
    return Launch(tuple(found), _labels(data), tuple(warnings))


def _for_exec_env(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, list) and any(v in ("*", EXEC_ENV) for v in value)


def _labels(data: Mapping[str, Any]) -> dict[str, str]:
    raw = data.get("labels", [])
    if not isinstance(raw, list):
        raise ValueError("labels: must be an array of tables ([[labels]])")
    labels = {}
    for index, label in enumerate(raw):
        key = label.get("key") if isinstance(label, dict) else None
        value = label.get("value") if isinstance(label, dict) else None
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise ValueError(f"labels[{index}]: key and value must be strings")
        labels[key] = value
    return labels


def parse_build(text: str, entries: Sequence[Entry]) -> list[str]:
    """The names in ``build.toml``'s ``[[unmet]]``; each must name an entry of the plan."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML: {exc}") from None
    unmet = data.get("unmet", [])
    if not isinstance(unmet, list):
        raise ValueError("unmet: must be an array of tables ([[unmet]])")
    names = []
    planned = {entry.name for entry in entries}
    for index, item in enumerate(unmet):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"unmet[{index}].name: is required")
        if name not in planned:
            raise ValueError(f"unmet[{index}].name: {name!r} is not an entry of the buildpack plan")
        names.append(name)
    return names
