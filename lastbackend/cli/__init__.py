"""The ``lastbackend`` command line, on click: the serving commands (``daemon``, ``api``,
``controller``, ``node``, ``router``), the admin commands (``tree``, ``routes``, ``lifecycle``,
``stack``, ``version``) and the user commands that talk to the API (``login``, ``push``,
``apps``...).

Exit codes: 0 done, 1 failed (the reason on stderr), 2 a usage error or a refusal to start;
``lifecycle check`` adds 11 and 12. Each command module imports what it needs when it runs, so a
client command does not load the server side.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from lastbackend.cli import admin, daily, login, push, servers
from lastbackend.cli.output import error


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    help="lastbackend: serve the platform, administer it, and push apps to it.",
)
def cli() -> None:
    """The top group: every command hangs off it."""


for _command in (*servers.COMMANDS, *admin.COMMANDS, login.login, push.push, *daily.COMMANDS):
    cli.add_command(_command)


def parse(argv: Sequence[str]) -> tuple[str, dict[str, object]]:
    """A top-level command's name and its parameters, parsed as ``main`` would, not run."""
    name, *rest = argv
    command = cli.commands[name]
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
