"""A Dockerfile given the host's CA bundle in every ``RUN`` step, without it entering the image.

Why a rewrite. A Dockerfile build behind a TLS-inspecting proxy needs the proxy's CA in each
``RUN`` step that reaches a package registry (``pip install``, ``npm ci``, ``curl https://``), and
in none of the image's layers, its history or its config: the image runs elsewhere, and a CA
bundle baked in would stay trusted there. BuildKit can hand a step a file for its duration
(``RUN --mount=type=secret``: never in a layer, the build cache or the history), but only to the
steps whose ``RUN`` asks for it, and only the Dockerfile can give a step variables. So the
repository's Dockerfile is left as it is and the builder gets a copy in which:

- every ``RUN`` (of every stage) mounts the bundle at :data:`CA_FILE`. ``/dev`` is the step's own
  tmpfs, so the mount point leaves nothing behind either (a target under ``/run/secrets`` would
  leave an empty directory in every image). The image's own trust store is *not* covered: a
  Dockerfile that installs ``ca-certificates`` or runs ``update-ca-certificates`` must still be
  able to write it, and what it writes must be what lands in the image (OpenShift mounted its
  trust store over the image's and had to take that back for this reason);
- every stage that has a ``RUN`` declares an ``ARG`` for each of :data:`NAMES`, which
  the build sets to point at the mounted file: that is how OpenSSL, requests, pip, node and npm,
  curl, git and apt (through :data:`APT_CONF`) read a CA bundle from elsewhere than the system
  path. An ``ARG`` is a build-time variable: it is not in the image's config, so the app does not
  run with ``SSL_CERT_FILE`` pointing at a file that is gone. ``docker history`` records a
  ``RUN``'s declared arguments (``|7 SSL_CERT_FILE=/dev/lastbackend/ca.pem ... /bin/sh -c ...``):
  their names and these fixed paths, never the bundle.

Each instruction keeps its line (the ``--mount`` goes on the ``RUN``'s own line); the ``ARG``
lines are new lines after a ``FROM``, which :attr:`Rewritten.line_of` maps back, so an error that
names a line names the repository's. ``ONBUILD RUN`` is left alone (it runs in a later build),
and so is everything else: comments, continuations, the ``escape`` directive and JSON-form
``RUN`` are read the way Docker's parser reads them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from lastbackend.runtime.base import CA_VARIABLES

CA_SECRET = "lastbackend-ca"
APT_SECRET = "lastbackend-apt"
CA_DIR = "/dev/lastbackend"
CA_FILE = f"{CA_DIR}/ca.pem"
APT_CONF = f"{CA_DIR}/apt.conf"
"""``APT_CONFIG`` points here: one line telling apt's https transport to trust :data:`CA_FILE`.
apt reads it before its own configuration, which can still override it."""
APT_CONF_TEXT = f'Acquire::https::CAInfo "{CA_FILE}";\n'

MOUNTS = (
    f"--mount=type=secret,id={CA_SECRET},target={CA_FILE},mode=0444",
    f"--mount=type=secret,id={APT_SECRET},target={APT_CONF},mode=0444",
)
"""Readable by every user: a stage that switched to ``USER node`` runs ``npm ci`` as that user."""


NAMES = (*CA_VARIABLES, "APT_CONFIG")
"""The ``ARG`` each stage that runs something declares."""


def variables() -> dict[str, str]:
    """The build arguments the ``ARG`` lines take their values from."""
    return {**dict.fromkeys(CA_VARIABLES, CA_FILE), "APT_CONFIG": APT_CONF}


_DIRECTIVE = re.compile(r"^\s*#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*$")
_INSTRUCTION = re.compile(r"^(\s*)([A-Za-z]+)(?=\s|$)")


@attrs.frozen
class Rewritten:
    text: str
    line_of: tuple[int, ...]
    """``line_of[n - 1]``: the repository's line that line ``n`` of :attr:`text` came from."""

    def original_line(self, line: int) -> int:
        return self.line_of[line - 1] if 0 < line <= len(self.line_of) else line


def with_ca(text: str, names: Sequence[str] = NAMES) -> Rewritten:
    """``text`` with the CA mounts on each ``RUN`` and an ``ARG`` per name in each stage that
    runs something (see the module docstring)."""
    lines = text.splitlines(keepends=True)
    escape = "\\"
    start = 0
    for start, line in enumerate(lines):  # noqa: B007 - parser directives, then instructions
        found = _DIRECTIVE.match(line)
        if found is None:
            break
        if found.group(1).lower() == "escape" and found.group(2) in ("\\", "`"):
            escape = found.group(2)
    else:
        start = len(lines)
    continued = re.compile(re.escape(escape) + r"[ \t]*$")

    # instructions: (keyword, first line, last line)
    instructions: list[tuple[str, int, int]] = []
    open_at: int | None = None
    keyword = ""
    for number in range(start, len(lines)):
        line = lines[number].rstrip("\r\n")
        if open_at is None:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            found = _INSTRUCTION.match(line)
            keyword, open_at = (found.group(2).upper() if found else ""), number
        elif not line.strip() or line.lstrip().startswith("#"):
            continue  # comments and empty lines inside a continuation do not end it
        if not continued.search(line):
            instructions.append((keyword, open_at, number))
            open_at = None
    if open_at is not None:
        instructions.append((keyword, open_at, len(lines) - 1))

    runs = {first for kind, first, _ in instructions if kind == "RUN"}
    args_after: set[int] = set()
    stage_from: int | None = None
    for kind, _, last in instructions:
        if kind == "FROM":
            stage_from = last
        elif kind == "RUN" and stage_from is not None:
            args_after.add(stage_from)

    out: list[str] = []
    line_of: list[int] = []
    declared = "".join(f"ARG {name}\n" for name in names)
    for number, line in enumerate(lines):
        if number in runs:
            found = _INSTRUCTION.match(line)
            assert found is not None
            end = found.end()
            line = f"{line[:end]} {' '.join(MOUNTS)}{line[end:]}"
        out.append(line)
        line_of.append(number + 1)
        if number in args_after:
            if not line.endswith("\n"):
                out.append("\n")  # the FROM was the last line, with no newline: ends it
            out.append(declared)
            line_of.extend([number + 1] * len(names))
    return Rewritten("".join(out), tuple(line_of))
