"""``lastbackend login URL [--token T]``: check the endpoint answers and takes the token, then
store both for the other user commands."""

from __future__ import annotations

import click

from lastbackend.cli import client
from lastbackend.cli.output import err


@click.command(help="store the API endpoint and token (~/.config/lastbackend/config.toml, 0600)")
@click.argument("url")
@click.option("--token", default="", help="the API bearer token (default: none)")
def login(url: str, token: str) -> int:
    if not url.startswith(("http://", "https://")):
        url = f"http://{url}"
    entry = client.Login(url.rstrip("/"), token)
    with client.Api(entry) as api:
        api.get("/api/projects", per_page=1)  # reachable, and the token is taken
    path = client.save(entry)
    err().print(f"Logged in to {entry.url}; saved in {path}", markup=False)
    return 0


COMMANDS = (login,)
