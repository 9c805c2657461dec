"""``lastbackend push``: from a directory (or a docker image) to a URL in one command.

The steps are the documented ``/v3`` calls (docs/api/apps.md), in order: the project and the app
when missing; the app's lifecycle, environment and health check; a package (bits packed by
:mod:`~lastbackend.cli.pack` and streamed from disk, or a docker image); a droplet, its staging
log followed live; scale and domains; the droplet assigned (a rolling update when the app runs)
and the app started; then a wait for the rollout of the new image to complete and for every live
router to serve it (``GET .../routing``), and its URLs.
Ctrl-C while staging deletes the droplet, which stops the staging: what ran keeps running.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import click

from lastbackend.cli import client, manifest, pack
from lastbackend.cli.client import Api
from lastbackend.cli.manifest import AppSpec, ManifestError
from lastbackend.cli.output import Failure, err, out

DEFAULT_PROJECT = "default"
ROLLOUT_TIMEOUT = 600.0
ROUTE_TIMEOUT = 60.0
"""Seconds the routers get to load an app that runs: a router behind longer than that is broken
(Caddy refusing its config, etcd unreachable from it), and the push says which."""
POLL = 0.15
"""Seconds between polls of the rollout: three small GETs each."""
ROUTE_POLL = 0.05
"""Seconds between polls of ``.../routing`` (one read): a router announces a load at once."""


def _label(name: str) -> str:
    """A directory name as an app name: a DNS label."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    return label or "app"


def _env_pairs(values: tuple[str, ...]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not K=V", param_hint="'-e'")
        pairs[key] = rest
    return pairs


def specs(
    name: str | None,
    path: Path | None,
    manifest_file: Path | None,
    flags: dict[str, Any],
) -> list[AppSpec]:
    """What to push: the manifest's apps (only ``name`` if given), the flags over them."""
    directory = (path or Path.cwd()).resolve()
    found = manifest_file or manifest.find(path or Path.cwd())
    apps: list[AppSpec]
    try:
        apps = manifest.load(found) if found is not None else []
    except ManifestError as exc:
        raise Failure(str(exc)) from None
    if name is not None and apps:
        apps = [a for a in apps if a.name == name] or [AppSpec(name=name, path=directory)]
    if not apps:
        apps = [AppSpec(name=name or _label(directory.name), path=directory)]
    if path is not None and len(apps) == 1:
        apps = [attrs.evolve(apps[0], path=directory)]  # -p is the one app's directory
    # several apps: each its manifest path, relative to the manifest
    overrides = {k: v for k, v in flags.items() if v not in (None, (), {})}
    if overrides and len(apps) > 1:
        raise Failure("flags apply to one app: name it (`lastbackend push NAME ...`)")
    if overrides:
        env = {**apps[0].env, **overrides.pop("env", {})}
        apps = [attrs.evolve(apps[0], env=env, **overrides)]
    return apps


@click.command(help="push a directory (or a docker image) as an app: stage, start, print its URLs")
@click.argument("name", required=False)
@click.option(
    "-p",
    "--path",
    type=click.Path(path_type=Path, file_okay=False),
    help="the app's directory (default: the current one, or the manifest's path)",
)
@click.option("--project", default=None, help=f"project (LB_PROJECT; default {DEFAULT_PROJECT})")
@click.option("-i", "--instances", type=click.IntRange(0), help="number of instances")
@click.option("-m", "--memory", help="memory per instance: 256M, 1G")
@click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="an environment variable")
@click.option("-b", "--buildpack", help="a buildpack name (default: detected)")
@click.option("--docker-image", help="push this image instead of a directory")
@click.option(
    "--docker-username",
    help="registry user for --docker-image (password: LB_DOCKER_PASSWORD or a prompt)",
)
@click.option("--domain", "domains", multiple=True, metavar="HOST", help="also serve at HOST")
@click.option(
    "-f",
    "--manifest",
    "manifest_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="a lastbackend.yml (default: the one in the directory, if any)",
)
@click.option(
    "--restage", is_flag=True, help="stage even when the files are those of the running droplet"
)
def push(
    name: str | None,
    path: Path | None,
    project: str | None,
    instances: int | None,
    memory: str | None,
    env: tuple[str, ...],
    buildpack: str | None,
    docker_image: str | None,
    docker_username: str | None,
    domains: tuple[str, ...],
    manifest_file: Path | None,
    restage: bool,
) -> int:
    if path is not None and not path.is_dir():
        raise Failure(f"path: {path} is not a directory")
    try:
        mb = manifest.memory_mb(memory, "memory") if memory is not None else None
    except ManifestError as exc:
        raise click.BadParameter(str(exc), param_hint="'-m'") from None
    flags: dict[str, Any] = {
        "instances": instances,
        "memory": mb,
        "env": _env_pairs(env),
        "buildpack": buildpack,
        "docker_image": docker_image,
        "docker_username": docker_username,
        "domains": domains,
    }
    apps = specs(name, path, manifest_file, flags)
    project = project or os.environ.get("LB_PROJECT") or DEFAULT_PROJECT
    with Api(client.load()) as api:
        for spec in apps:
            Push(api, project, spec, restage=restage).run()
    return 0


class Push:
    """One app's push, step by step."""

    def __init__(self, api: Api, project: str, spec: AppSpec, *, restage: bool = False) -> None:
        self.api = api
        self.project = project
        self.spec = spec
        self.restage = restage
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        err().print(text, markup=False, highlight=False)

    def run(self) -> None:
        spec = self.spec
        if spec.docker_image is None and not spec.path.is_dir():
            raise Failure(f"path: {spec.path} is not a directory")
        pid = self.ensure_project()
        app = self.ensure_app(pid)
        guid = app["guid"]
        relifecycled = self.configure(app)
        with tempfile.TemporaryDirectory(prefix="lastbackend-push-") as tmp:
            packed = self.pack(Path(tmp)) if spec.docker_image is None else None
            droplet = None
            if packed is not None and not relifecycled and not self.restage:
                droplet = self.unchanged(app, packed)
            fresh = droplet is None
            if droplet is None:
                package = self.package(guid, packed)
                droplet = self.stage(package["guid"])
        self.scale(pid, guid)
        if fresh:
            self.api.call(
                "PATCH",
                f"/v3/apps/{guid}/relationships/current_droplet",
                {"data": {"guid": droplet["guid"]}},
            )
        if app["desired_state"] != "STARTED":
            self.api.call("POST", f"/v3/apps/{guid}/actions/start")
            self.say(f"Starting {spec.name}")
        elif fresh:
            self.say(f"Rolling {spec.name} to the new droplet")
        running = self.wait(pid, guid, droplet, first=app["desired_state"] != "STARTED")
        urls = self.api.get(f"/v3/apps/{guid}")["urls"]
        if running and urls:
            self.wait_routed(f"/api/projects/{pid}/services/{guid}")
        took = time.monotonic() - self.started
        self.say(f"{spec.name} is running ({took:.2f}s):")
        for url in urls:
            out().print(url, markup=False, highlight=False, soft_wrap=True)

    # the steps

    def ensure_project(self) -> str:
        found = self.api.call("GET", f"/api/projects/{self.project}", missing_ok=True)
        if found is None:
            found = self.api.call("POST", "/api/projects", {"name": self.project})
            self.say(f"Created project {self.project}")
        return str(found["id"])

    def ensure_app(self, pid: str) -> dict[str, Any]:
        listed = self.api.get("/v3/apps", names=self.spec.name, space_guids=pid)["resources"]
        if listed:
            return dict(listed[0])
        body: dict[str, Any] = {"name": self.spec.name, "relationships": {"space": {"guid": pid}}}
        if self.spec.docker_image is not None:
            body["lifecycle"] = {"type": "docker", "data": {}}
        created = self.api.call("POST", "/v3/apps", body)
        self.say(f"Created app {self.spec.name} in {self.project}")
        return dict(created)

    def configure(self, app: dict[str, Any]) -> bool:
        """Patch what the push changes on the app; whether that is its lifecycle (a restage)."""
        spec = self.spec
        patch: dict[str, Any] = {}
        if spec.buildpack is not None and app["lifecycle"]["type"] == "buildpack":
            data = {**app["lifecycle"]["data"], "buildpack": spec.buildpack}
            if data != app["lifecycle"]["data"]:
                patch["lifecycle"] = {"type": "buildpack", "data": data}
        env = {**(app.get("environment_variables") or {}), **spec.env}
        if env != (app.get("environment_variables") or {}):
            patch["environment_variables"] = env
        if spec.health_check_type is not None:
            check: dict[str, Any] = {"type": spec.health_check_type}
            if spec.health_check_type == "http":
                check["data"] = {"endpoint": spec.health_check_endpoint or "/"}
            patch["health_check"] = check
        if patch:
            self.api.call("PATCH", f"/v3/apps/{app['guid']}", patch)
        return "lifecycle" in patch

    def pack(self, tmp: Path) -> pack.Packed:
        try:
            packed = pack.pack(self.spec.path, tmp / "app.tar.gz")
        except pack.PackError as exc:
            raise Failure(str(exc)) from None
        self.say(
            f"Packed {packed.files} files from {self.spec.path} "
            f"({_size(packed.size)}, sha1 {packed.sha1[:12]})"
        )
        return packed

    def unchanged(self, app: dict[str, Any], packed: pack.Packed) -> dict[str, Any] | None:
        """The running droplet when it was staged from these very bytes (packing is
        deterministic: same files, same sha1), so staging them again would make the same."""
        if app["desired_state"] != "STARTED":
            return None
        current = self.api.call("GET", f"/v3/apps/{app['guid']}/droplets/current", missing_ok=True)
        if not current or current.get("state") != "STAGED":
            return None
        staged = ((current.get("staging_response") or {}).get("hash") or {}).get("value")
        if staged != packed.sha1:
            return None
        self.say(
            f"Unchanged since droplet {current['guid']} (sha1 {packed.sha1[:12]}): staging "
            "skipped (--restage to stage anyway)"
        )
        return dict(current)

    def package(self, guid: str, packed: pack.Packed | None) -> dict[str, Any]:
        spec = self.spec
        if packed is None:
            body: dict[str, Any] = {"type": "docker", "image": spec.docker_image}
            if spec.docker_username:
                body["credentials"] = {"user": spec.docker_username, "password": _password()}
            return dict(self.api.call("POST", f"/v3/apps/{guid}/packages", body))
        created = self.api.call("POST", f"/v3/apps/{guid}/packages", {"type": "bits"})
        return self.upload(created["guid"], packed)

    def upload(self, package: str, packed: pack.Packed) -> dict[str, Any]:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TransferSpeedColumn,
        )

        console = err()
        with (
            packed.path.open("rb") as raw,
            Progress(
                "Uploading",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=console,
                transient=True,
                disable=not console.is_terminal,
            ) as progress,
        ):
            task = progress.add_task("upload", total=packed.size)
            stream = _Counting(raw, lambda n: progress.advance(task, n))
            result = self.api.upload(
                f"/v3/packages/{package}/upload", "bits", "app.tar.gz", stream, packed.size
            )
        return dict(result)

    def stage(self, package: str) -> dict[str, Any]:
        droplet = self.api.call("POST", f"/v3/packages/{package}/droplets", {})
        guid = droplet["guid"]
        try:  # from here on, Ctrl-C deletes the droplet
            self.say(f"Staging {self.spec.name} (droplet {guid})")
            with self.api.lines(f"/v3/droplets/{guid}/logs", follow="true") as lines:
                for line in lines:
                    err().print(f"   {line}", markup=False, highlight=False, soft_wrap=True)
            final = self.api.get(f"/v3/droplets/{guid}")
            while final["state"] not in ("STAGED", "FAILED"):  # the log ended before the state
                time.sleep(0.2)
                final = self.api.get(f"/v3/droplets/{guid}")
        except KeyboardInterrupt:
            self.api.call("DELETE", f"/v3/droplets/{guid}", missing_ok=True)
            raise Failure(
                "staging interrupted: the droplet was deleted; what ran keeps running", code=130
            ) from None
        if final["state"] == "FAILED":
            raise Failure(f"staging failed: {final.get('error') or 'see the log above'}")
        return dict(final)

    def scale(self, pid: str, guid: str) -> None:
        spec = self.spec
        base = f"/api/projects/{pid}/services/{guid}"
        config: dict[str, Any] = {}
        if spec.instances is not None:
            config["replicas"] = spec.instances
        if spec.memory is not None:
            config["memory"] = spec.memory
        if config:
            self.api.call("PATCH", f"{base}/config", config)
        if spec.domains:
            held = self.api.get(f"{base}/domains") or {}
            wanted = {**held, **dict.fromkeys(spec.domains, True)}
            if wanted != held:
                self.api.call("PUT", f"{base}/domains", wanted)

    def wait(self, pid: str, guid: str, droplet: dict[str, Any], *, first: bool) -> bool:
        """Until the newest revision runs the droplet's image and its rollout is complete;
        whether anything runs (``False``: scaled to 0).

        A ``first`` start (the app was stopped: no old instance) is done sooner, once every
        instance runs and passes its check: the routers send traffic to every ready container
        of a service none of whose containers has proven itself yet (docs/api/deploys.md), so
        waiting ``min_ready`` more would only delay the URL that already answers."""
        base = f"/api/projects/{pid}/services/{guid}"
        image = droplet.get("image")
        deadline = time.monotonic() + ROLLOUT_TIMEOUT
        shown = ""
        with err().status("Waiting for the instances to be ready") as status:
            while time.monotonic() < deadline:
                service = self.api.get(base)
                rollout = (service.get("status") or {}).get("rollout") or {}
                newest = self.api.get(f"{base}/revisions", per_page=1)["resources"]
                ours = bool(newest) and newest[0]["spec"].get("image") == image
                if ours and rollout.get("revision") == newest[0]["revision"]:
                    if rollout.get("state") == "complete":
                        return True
                    if rollout.get("state") == "failed":
                        raise Failure(f"the rollout failed: {rollout.get('reason') or 'unknown'}")
                    if first and self._all_ready(base, service):
                        return True
                    line = f"{rollout.get('ready', 0)}/{rollout.get('desired', '?')} ready"
                    if rollout.get("reason"):
                        line += f": {rollout['reason']}"
                    if line != shown:
                        status.update(f"Waiting for the instances: {line}")
                        shown = line
                if (service.get("config") or {}).get("replicas") == 0:
                    return False  # nothing to wait for
                time.sleep(POLL)
        raise Failure(f"the instances were not ready within {ROLLOUT_TIMEOUT:.0f}s")

    def wait_routed(self, base: str) -> None:
        """Until every live router's loaded config includes the app as it is now, so the URLs
        printed next answer (a router loads a change within ~0.1 s; this covers that gap)."""
        deadline = time.monotonic() + ROUTE_TIMEOUT
        with err().status("Waiting for the routers") as status:
            while True:
                routing = self.api.get(f"{base}/routing")
                if not routing["routers"]:
                    self.say("No router is running: the URLs answer once one is")
                    return
                if routing["routed"]:
                    return
                behind = [r for r in routing["routers"] if not r["current"]]
                if time.monotonic() > deadline:
                    names = ", ".join(
                        r["name"] + (f" ({r['error']})" if r.get("error") else "") for r in behind
                    )
                    raise Failure(
                        f"the app runs, but these routers have not loaded it within "
                        f"{ROUTE_TIMEOUT:.0f}s: {names}"
                    )
                status.update(
                    f"Waiting for the routers: {len(routing['routers']) - len(behind)}"
                    f"/{len(routing['routers'])} serve it"
                )
                time.sleep(ROUTE_POLL)

    def _all_ready(self, base: str, service: dict[str, Any]) -> bool:
        wanted = int((service.get("config") or {}).get("replicas") or 0)
        found = self.api.get(f"{base}/containers")["resources"]
        ready = [c for c in found if c.get("status") == "running" and c.get("ready")]
        return len(ready) >= wanted == len(found)


class _Counting:
    """A read-through file that reports how much was read (for the progress bar)."""

    def __init__(self, raw: Any, seen: Any) -> None:
        self.raw = raw
        self.seen = seen

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.raw.read(size)
        self.seen(len(data))
        return data


def _password() -> str:
    """The registry password: ``LB_DOCKER_PASSWORD``, else a prompt; never a flag."""
    password = os.environ.get("LB_DOCKER_PASSWORD")
    if password:
        return password
    if not sys.stdin.isatty():
        raise Failure("docker password: set LB_DOCKER_PASSWORD (no terminal to prompt on)")
    return str(click.prompt("Docker registry password", hide_input=True))


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


COMMANDS = (push,)
