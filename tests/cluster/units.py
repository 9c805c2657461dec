"""The systemd units of ``deploy/systemd/`` as the cluster tests start them.

The multi-host recipe in docs/operations.md is those units plus environment files; the tests run
each process from its unit's ``ExecStart`` with the environment its ``EnvironmentFile=`` lines
give, written as the recipe says, so what the docs tell an operator to install is what the
faults are tried on. Only the binary's path changes (the checkout's console script for
``/opt/lastbackend/.venv/bin/lastbackend``) and the files live in a test directory.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

import attrs

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
KINDS = ("api", "controller", "router", "node")
BINARY = "/opt/lastbackend/.venv/bin/lastbackend"
ETC = "/etc/lastbackend/"


@attrs.frozen
class Unit:
    kind: str
    path: Path
    exec_start: tuple[str, ...]
    environment_files: tuple[tuple[str, bool], ...]  # (path, required)
    kill_signal: str
    timeout_stop: float

    def argv(self) -> list[str]:
        """The arguments after the binary (what ``tests.e2e.harness.Proc`` runs)."""
        if self.exec_start[0] != BINARY:
            raise AssertionError(f"{self.path.name}: ExecStart runs {self.exec_start[0]}")
        return list(self.exec_start[1:])

    def environment(self, etc: Path) -> dict[str, str]:
        """The variables systemd would set from the environment files, with ``/etc/lastbackend/``
        read from ``etc``: later files win, a missing optional one (``-``) is skipped."""
        env: dict[str, str] = {}
        for name, required in self.environment_files:
            path = etc / name.removeprefix(ETC)
            if not path.exists():
                if required:
                    raise AssertionError(f"{self.path.name} needs {name}")
                continue
            env.update(read_environment_file(path.read_text()))
        return env


def read_environment_file(text: str) -> dict[str, str]:
    """``KEY=value`` lines as systemd reads them: ``#`` and ``;`` comments, quotes removed."""
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"not KEY=value: {line!r}")
        words = shlex.split(value) if value.strip() else [""]
        found[key.strip()] = " ".join(words)
    return found


def write_environment_file(path: Path, values: Mapping[str, str]) -> None:
    path.write_text("".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items()))


def load(kind: str) -> Unit:
    """``deploy/systemd/lastbackend-<kind>.service``, the directives the tests act on."""
    path = UNITS / f"lastbackend-{kind}.service"
    exec_start: tuple[str, ...] = ()
    files: list[tuple[str, bool]] = []
    kill, timeout = "SIGTERM", 90.0  # systemd's defaults
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if not sep or line.startswith(("#", ";")):
            continue
        match key.strip():
            case "ExecStart":
                exec_start = tuple(shlex.split(value))
            case "EnvironmentFile":
                optional = value.startswith("-")
                files.append((value.removeprefix("-"), not optional))
            case "KillSignal":
                kill = value.strip()
            case "TimeoutStopSec":
                timeout = float(value.strip())
    return Unit(kind, path, exec_start, tuple(files), kill, timeout)
