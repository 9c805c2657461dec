"""The ``lastbackend`` command line, on click: the serving commands (``daemon``, ``api``,
``controller``, ``node``, ``router``), the admin commands (``tree``, ``routes``, ``lifecycle``,
``stack``, ``version``) and the user commands that talk to the API (``login``, ``push``,
``apps``...).

Exit codes: 0 done, 1 failed (the reason on stderr), 2 a usage error or a refusal to start;
``lifecycle check`` adds 11 and 12. Each command module imports what it needs when it runs, so a
client command does not load the server side.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import click

from lastbackend.cli.output import error

MODULES = {
    "servers": ("daemon", "api", "controller", "node", "router"),
    "admin": ("tree", "routes", "lifecycle", "stack", "version"),
    "login": ("login",),
    "push": ("push",),
    "daily": (
        "apps", "app", "logs", "scale", "env", "set-env", "unset-env", "start", "stop",
        "restart", "rollback", "delete", "builds", "tags", "events",
    ),
}  # fmt: skip
"""Which module of this package defines each command: only the one run is imported."""


class Commands(click.Group):
    """A group whose commands are imported when asked for (``push`` loads no etcd client, no
    rich table, ``tree`` no HTTP client), which keeps every command's start-up short."""

    where = {name: module for module, names in MODULES.items() for name in names}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.where)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = self.where.get(cmd_name)
        if module is None:
            return None
        loaded = importlib.import_module(f"lastbackend.cli.{module}")
        found: click.Command = next(c for c in loaded.COMMANDS if c.name == cmd_name)
        return found


@click.group(
    cls=Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    help="lastbackend: serve the platform, administer it, and push apps to it.",
)
def cli() -> None:
    """The top group: every command hangs off it."""


def parse(argv: Sequence[str]) -> tuple[str, dict[str, object]]:
    """A top-level command's name and its parameters, parsed as ``main`` would, not run."""
    name, *rest = argv
    command = cli.get_command(click.Context(cli), name)
    if command is None:
        raise KeyError(name)
    with command.make_context(name, rest) as ctx:
        return name, dict(ctx.params)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command: its exit code, never an exception (usage errors: 2)."""
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="lastbackend",
            standalone_mode=False,
        )
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        error("aborted")
        return 130
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
