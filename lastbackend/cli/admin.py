"""The admin commands: ``tree``, ``routes``, ``lifecycle inspect | check``, ``stack build |
inspect`` and ``version``. They read etcd, the lifecycle descriptor or the Docker engine directly,
never the API; their output is plain text scripts have read since before click.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lastbackend.cli import options
from lastbackend.cli.output import Failure, emit_json
from lastbackend.config import ConfigError, Settings
from lastbackend.store import keys

if TYPE_CHECKING:
    from lastbackend.lifecycle.descriptor import Descriptor

VERSION = "0.1.0"


def _settings(params: dict[str, Any]) -> Settings:
    try:
        return options.settings_from(params)
    except ConfigError as exc:
        raise Failure(str(exc), code=2) from None


def _etcd_run(coro: Any) -> int:
    """Run a command that reads etcd: 2 when it cannot be reached with these credentials."""
    from lastbackend.store import etcd_tls
    from lastbackend.store.etcd import StoreUnavailable

    try:
        return int(asyncio.run(coro))
    except etcd_tls.CredentialsError as exc:
        raise Failure(str(exc), code=2) from None
    except StoreUnavailable as exc:
        raise Failure(str(exc)) from None


@click.command(help="print the /lastbackend key tree, values decoded, secrets masked")
@options.COMMON
@options.READER_DATA_DIR
@click.argument("prefix", required=False, default=keys.ROOT)
@click.option("--json", "as_json", is_flag=True, help="one JSON object {key: value}")
def tree(prefix: str, as_json: bool, **params: Any) -> int:
    from lastbackend.cli import keytree

    settings = _settings(params)
    return _etcd_run(keytree.tree(settings, prefix, as_json))


@click.command(help="print the route table: host -> upstreams")
@options.COMMON
@options.ROUTING
@options.READER_DATA_DIR
@click.option("--json", "as_json", is_flag=True, help="the route table as JSON")
def routes(as_json: bool, **params: Any) -> int:
    from lastbackend.cli import keytree

    settings = _settings(params)
    return _etcd_run(keytree.routes(settings, as_json))


@click.command(help="print the version")
def version() -> int:
    print(VERSION)
    return 0


@click.group(help="the lifecycle descriptor: inspect it, check APIs")
def lifecycle() -> None:
    """A group: the subcommands do the work."""


def _descriptor(settings: Settings) -> Descriptor:
    from lastbackend.lifecycle import descriptor as lifecycle_descriptor

    try:
        return lifecycle_descriptor.load(settings.lifecycle_descriptor)
    except lifecycle_descriptor.DescriptorError as exc:
        raise Failure(str(exc), code=2) from None


@lifecycle.command(
    "inspect", help="print the lifecycle version and its deprecated and supported APIs"
)
@options.DESCRIPTOR
@click.option(
    "--json", "as_json", is_flag=True, help="the GET /api/lifecycle body: expanded, with labels"
)
def lifecycle_inspect(as_json: bool, **params: Any) -> int:
    from lastbackend.lifecycle import descriptor as lifecycle_descriptor

    descriptor = _descriptor(_settings(params))
    if as_json:
        emit_json(lifecycle_descriptor.view(descriptor))
    else:
        print(inspect_text(descriptor), end="")
    return 0


@lifecycle.command(
    "check",
    help="may this platform API run this buildpack API? exit 0, 11 (platform API) or 12 "
    "(buildpack API); deprecation warnings per CNB_*_DEPRECATION_MODE",
)
@options.DESCRIPTOR
@click.option(
    "--platform-api",
    "check_platform_api",
    help="default: lifecycle.platform_api (CNB_PLATFORM_API), else the newest supported",
)
@click.option("--buildpack-api", "check_buildpack_api", help="a buildpack.toml's api, like 2.1")
def lifecycle_check(
    check_platform_api: str | None, check_buildpack_api: str | None, **params: Any
) -> int:
    from lastbackend.lifecycle import descriptor as lifecycle_descriptor

    settings = _settings(params)
    descriptor = _descriptor(settings)
    platform = check_platform_api or lifecycle_descriptor.platform_api(
        descriptor, settings.platform_api
    )
    result = lifecycle_descriptor.check(descriptor, platform, check_buildpack_api, os.environ)
    for warning in result.warnings:
        print(f"Warning: {warning}", file=sys.stderr)
    if result.error is not None:
        print(f"ERROR: {result.error}", file=sys.stderr)
        return result.exit_code
    checked = [f"platform API {platform}"]
    if check_buildpack_api is not None:
        checked.append(f"buildpack API {check_buildpack_api}")
    print(f"{' and '.join(checked)}: supported by lifecycle {descriptor.version}")
    return result.exit_code


def inspect_text(descriptor: Descriptor) -> str:
    """``pack builder inspect``'s ``Lifecycle:`` block: the lists as the descriptor has them."""

    def listed(entries: Sequence[object]) -> str:
        return ", ".join(map(str, entries)) or "(none)"

    lines = ["Lifecycle:", f"  Version: {descriptor.version}"]
    for title, apis in (("Buildpack", descriptor.buildpack), ("Platform", descriptor.platform)):
        lines += [
            f"  {title} APIs:",
            f"    Deprecated: {listed(apis.deprecated)}",
            f"    Supported: {listed(apis.supported)}",
        ]
    return "\n".join(lines) + "\n"


@click.group(help="stacks (build and run images): build the default, inspect")
def stack() -> None:
    """A group: the subcommands do the work."""


STACK_OPTIONS = options.stack(
    click.option(
        "--name",
        default=None,
        help="busybox, debian or an admin's stack (default: staging.default_stack or busybox)",
    ),
    click.option(
        "--docker", help="the Docker engine, like DOCKER_HOST (default: node.docker_host)"
    ),
    options.DESCRIPTOR,
)


@stack.command(
    "build",
    help="build a stack: busybox offline from busybox-static (idempotent; rebuilt when the "
    "lifecycle descriptor changed), debian with mmdebstrap from this machine's apt sources",
)
@click.option(
    "--busybox",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("/bin/busybox"),
    help="a statically linked busybox",
)
@STACK_OPTIONS
def stack_build(busybox: Path, name: str | None, docker: str | None, **params: Any) -> int:
    return _stack("build", _settings(params), name, docker, busybox)


@stack.command(
    "inspect", help="print a stack's images and their lifecycle labels, as pack builder inspect"
)
@STACK_OPTIONS
def stack_inspect(name: str | None, docker: str | None, **params: Any) -> int:
    return _stack("inspect", _settings(params), name, docker, None)


def _stack(
    action: str, settings: Settings, name: str | None, docker: str | None, busybox: Path | None
) -> int:
    """The Docker engine only, no etcd: 1 when the stack is absent, 2 when it cannot be built."""
    from lastbackend.lifecycle import descriptor as lifecycle_descriptor
    from lastbackend.lifecycle import stacks
    from lastbackend.runtime.base import ContainerRuntimeError
    from lastbackend.runtime.docker import DockerRuntime  # the Docker SDK, only here

    chosen = name or settings.default_stack or stacks.DEFAULT_STACK

    async def run() -> int:
        runtime = DockerRuntime(docker or settings.docker_host or None)
        try:
            if action == "build":
                descriptor = lifecycle_descriptor.load(settings.lifecycle_descriptor)
                if chosen == stacks.DEBIAN_STACK:  # always anew: a rebuild picks up updates
                    started = time.monotonic()
                    built = await stacks.build_debian(runtime, descriptor, log=print)
                    print(f"Built in {time.monotonic() - started:.0f}s")
                else:
                    assert busybox is not None
                    built = await stacks.ensure_stack(runtime, chosen, descriptor, busybox)
            else:
                built = await stacks.inspect(runtime, chosen)
        finally:
            await runtime.close()
        print(stacks.describe(built), end="")
        return 0 if built.present else 1

    try:
        return asyncio.run(run())
    except (
        lifecycle_descriptor.DescriptorError,
        stacks.StackError,
        ContainerRuntimeError,
    ) as exc:
        raise Failure(str(exc), code=2) from None


COMMANDS = (tree, routes, lifecycle, stack, version)
