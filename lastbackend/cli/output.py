"""Where the CLI writes: rich consoles for people, plain ``print`` for what scripts read.

Colour only on a terminal, and never with ``NO_COLOR`` set (rich checks both); ``--json`` output
and the admin commands' text go through :func:`print` so no markup or wrapping ever touches them.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console


@cache
def out() -> Console:
    """stdout for people: tables, URLs. Not a terminal: no colour, no width limit."""
    return _console(stderr=False)


@cache
def err() -> Console:
    """stderr: progress, staging logs, messages."""
    return _console(stderr=True)


def _console(*, stderr: bool) -> Console:
    from rich.console import Console  # on first use: admin commands never pay for it

    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    return Console(
        stderr=stderr,
        highlight=False,
        soft_wrap=not terminal,
        width=None if terminal else 10_000,
    )


def error(message: str) -> None:
    """``lastbackend: <message>`` on stderr, the prefix red on a terminal."""
    console = err()
    if console.no_color or not console.is_terminal:
        print(f"lastbackend: {message}", file=sys.stderr)
    else:
        console.print(f"[bold red]lastbackend:[/] {message}", markup=True, highlight=False)


def emit_json(value: Any) -> None:
    """One JSON document on stdout, nothing else."""
    print(json.dumps(value, indent=2, ensure_ascii=False))


class Failure(click.ClickException):
    """What the user must fix or know: printed as ``lastbackend: <line>`` per line, exit 1
    (or ``code``: 2 for a refusal to start, as the serving commands always had)."""

    def __init__(self, *lines: str, code: int = 1) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines or ("failed",)
        self.exit_code = code

    def show(self, file: Any = None) -> None:
        for line in self.lines:
            error(line)
