"""The commands a developer runs every day on pushed apps: ``apps``, ``app``, ``logs``, ``scale``,
``env``/``set-env``/``unset-env``, ``start``/``stop``/``restart``, ``rollback``, ``delete``,
``builds``, ``tags``, ``events``.

An app is found by name (``--project`` when two projects hold the same name). Listings take
``--json``: one JSON document on stdout and nothing else, for scripts; without it a rich table.
Every call is one of the documented API routes (``/v3/apps`` and the app's service in
``/api/projects/{p}/services/{s}``): the CLI keeps no state of its own.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import attrs
import click
from rich.table import Table

from lastbackend.cli import client
from lastbackend.cli.client import Api
from lastbackend.cli.manifest import ManifestError, memory_mb
from lastbackend.cli.output import Failure, emit_json, err, out

AS_JSON = click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout")
PROJECT = click.option("--project", help="the app's project, when its name is not unique")


@attrs.frozen
class Target:
    """An app and the service it is (the same id), with its project's id."""

    app: dict[str, Any]
    pid: str

    @property
    def guid(self) -> str:
        return str(self.app["guid"])

    @property
    def service(self) -> str:
        return f"/api/projects/{self.pid}/services/{self.guid}"


def _api() -> Api:
    return Api(client.load())


def find(api: Api, name: str, project: str | None) -> Target:
    params: dict[str, Any] = {"names": name}
    if project is not None:
        found = api.call("GET", f"/api/projects/{project}", missing_ok=True)
        if found is None:
            raise Failure(f"project: no project {project}")
        params["space_guids"] = found["id"]
    apps = api.get("/v3/apps", **params)["resources"]
    if not apps:
        raise Failure(f"app: no app {name}" + (f" in {project}" if project else ""))
    if len(apps) > 1:
        raise Failure(f"app: {len(apps)} apps are named {name}: choose one with --project")
    app = apps[0]
    return Target(app, app["relationships"]["space"]["guid"])


def _show(table: Table) -> None:
    out().print(table)


def _rollout(service: dict[str, Any]) -> dict[str, Any]:
    return dict((service.get("status") or {}).get("rollout") or {})


HISTORY = 2000
"""How many etcd revisions back ``app`` looks for the app's recent events."""


def recent_events(api: Api, target: Target, limit: int = 10) -> list[dict[str, Any]]:
    """The last changes under the app's service keys: the event stream replayed from a little
    before now (``since``) up to the revision the containers list was read at, or until it has
    been quiet for 0.3 s (the replay comes at once; after it only new changes would)."""
    now = api.revision(f"{target.service}/containers")
    prefix = f"projects/{target.pid}/services/{target.guid}/"
    since = max(1, now - HISTORY)
    found: list[dict[str, Any]] = []
    with api.lines("/api/events", idle=0.3, prefix=prefix, since=since) as lines:
        kind = ""
        for line in lines:
            if line.startswith("event:"):
                kind = line[6:].strip()
                if kind == "relist":
                    break  # that history is compacted: show what there is
            elif line.startswith("data:") and kind in ("created", "updated", "deleted"):
                data = json.loads(line[5:])
                key = str(data.get("key", ""))
                found.append(
                    {"revision": data.get("revision"), "kind": kind, "key": key.split(prefix)[-1]}
                )
            elif line.startswith("id:") and line[3:].strip() == str(now):
                break  # the last event of the revision the list was read at
    return found[-limit:]


# listings ----------------------------------------------------------------------------------


@click.command(help="list apps: name, project, state, ready/desired instances, URLs")
@PROJECT
@AS_JSON
def apps(project: str | None, as_json: bool) -> int:
    with _api() as api:
        projects = {p["id"]: p for p in api.every("/api/projects")}
        params = {}
        if project is not None:
            chosen = [p for p in projects.values() if project in (p["id"], p["name"])]
            if not chosen:
                raise Failure(f"project: no project {project}")
            params["space_guids"] = chosen[0]["id"]
        listed = api.every("/v3/apps", **params)
        services: dict[str, dict[str, Any]] = {}
        for pid in sorted({a["relationships"]["space"]["guid"] for a in listed}):
            for service in api.every(f"/api/projects/{pid}/services"):
                services[service["id"]] = service
    rows = []
    for app in listed:
        pid = app["relationships"]["space"]["guid"]
        service = services.get(app["guid"], {})
        rollout = _rollout(service)
        rows.append(
            {
                "name": app["name"],
                "guid": app["guid"],
                "project": projects.get(pid, {}).get("name", pid),
                "state": app["desired_state"],
                "rollout": rollout.get("state"),
                "ready": rollout.get("ready", 0),
                "desired": (service.get("config") or {}).get("replicas", 0),
                "urls": app.get("urls", []),
            }
        )
    if as_json:
        emit_json(rows)
        return 0
    table = Table("name", "project", "state", "instances", "urls", box=None, pad_edge=False)
    for row in rows:
        state = row["state"]
        if row["rollout"] not in (None, "complete"):
            state += f" ({row['rollout']})"
        table.add_row(
            row["name"],
            row["project"],
            state,
            f"{row['ready']}/{row['desired']}",
            " ".join(row["urls"]),
        )
    _show(table)
    return 0


@click.command(
    help="an app's details: lifecycle, instances, the rollout, its containers, recent events"
)
@click.argument("name")
@PROJECT
@AS_JSON
def app(name: str, project: str | None, as_json: bool) -> int:
    with _api() as api:
        target = find(api, name, project)
        service = api.get(target.service)
        containers = api.every(f"{target.service}/containers")
        droplet = api.call("GET", f"/v3/apps/{target.guid}/droplets/current", missing_ok=True)
        events = recent_events(api, target)
    if as_json:
        emit_json(
            {
                "app": target.app,
                "service": service,
                "containers": containers,
                "droplet": droplet,
                "events": events,
            }
        )
        return 0
    config = service.get("config") or {}
    rollout = _rollout(service)
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_row("name", f"{target.app['name']} ({target.guid})")
    table.add_row("state", target.app["desired_state"])
    lifecycle = target.app["lifecycle"]
    table.add_row("lifecycle", f"{lifecycle['type']} {json.dumps(lifecycle.get('data') or {})}")
    table.add_row("instances", f"{config.get('replicas')} x {config.get('memory')} MB")
    table.add_row("image", str(service.get("image") or "-"))
    if droplet:
        table.add_row("droplet", f"{droplet['guid']} {droplet['state']}")
    if rollout:
        line = (
            f"revision {rollout['revision']} {rollout['state']}: "
            f"{rollout['ready']}/{rollout['desired']} ready"
        )
        if rollout.get("reason"):
            line += f" ({rollout['reason']})"
        table.add_row("rollout", line)
    table.add_row("urls", " ".join(target.app.get("urls", [])) or "-")
    _show(table)
    if containers:
        listing = Table("container", "status", "ready", "restarts", "reason", "node", box=None)
        for c in containers:
            listing.add_row(
                c["id"][:12],
                c["status"],
                "yes" if c.get("ready") else "no",
                str(c.get("restarts", 0)),
                c.get("reason") or "",
                c.get("node") or "",
            )
        out().print()
        _show(listing)
    if events:
        changes = Table("revision", "event", "key", box=None)
        for event in events:
            changes.add_row(str(event["revision"]), event["kind"], event["key"])
        out().print()
        _show(changes)
    return 0


@click.command(help="the app's environment variables")
@click.argument("name")
@PROJECT
@AS_JSON
def env(name: str, project: str | None, as_json: bool) -> int:
    with _api() as api:
        variables = find(api, name, project).app.get("environment_variables") or {}
    if as_json:
        emit_json(variables)
    else:
        for key, value in sorted(variables.items()):
            print(f"{key}={value}")
    return 0


def _set_env(name: str, project: str | None, change: Callable[[dict[str, str]], None]) -> None:
    with _api() as api:
        target = find(api, name, project)
        variables = dict(target.app.get("environment_variables") or {})
        change(variables)
        api.call("PATCH", f"/v3/apps/{target.guid}", {"environment_variables": variables})
    err().print(f"Environment of {name} updated: the instances restart with it", markup=False)


@click.command("set-env", help="set one environment variable (the instances roll to it)")
@click.argument("name")
@click.argument("key")
@click.argument("value")
@PROJECT
def set_env(name: str, key: str, value: str, project: str | None) -> int:
    _set_env(name, project, lambda v: v.__setitem__(key, value))
    return 0


@click.command("unset-env", help="remove one environment variable")
@click.argument("name")
@click.argument("key")
@PROJECT
def unset_env(name: str, key: str, project: str | None) -> int:
    def drop(variables: dict[str, str]) -> None:
        if key not in variables:
            raise Failure(f"env: {name} has no variable {key}")
        del variables[key]

    _set_env(name, project, drop)
    return 0


@click.command(help="change the number of instances and/or their memory")
@click.argument("name")
@click.option("-i", "--instances", type=click.IntRange(0), help="number of instances")
@click.option("-m", "--memory", help="memory per instance: 256M, 1G")
@PROJECT
@AS_JSON
def scale(
    name: str, instances: int | None, memory: str | None, project: str | None, as_json: bool
) -> int:
    config: dict[str, Any] = {}
    if instances is not None:
        config["replicas"] = instances
    if memory is not None:
        try:
            config["memory"] = memory_mb(memory, "memory")
        except ManifestError as exc:
            raise click.BadParameter(str(exc), param_hint="'-m'") from None
    with _api() as api:
        target = find(api, name, project)
        if config:
            api.call("PATCH", f"{target.service}/config", config)
        current = api.get(target.service)["config"]
    shown = {"instances": current["replicas"], "memory": current["memory"]}
    if as_json:
        emit_json(shown)
    else:
        print(f"{name}: {shown['instances']} x {shown['memory']} MB")
    return 0


def _action(name: str, project: str | None, *actions: str) -> None:
    with _api() as api:
        target = find(api, name, project)
        for action in actions:
            api.call("POST", f"/v3/apps/{target.guid}/actions/{action}")
    err().print(f"{name}: {' + '.join(actions)}", markup=False)


@click.command(help="start the app's current droplet")
@click.argument("name")
@PROJECT
def start(name: str, project: str | None) -> int:
    _action(name, project, "start")
    return 0


@click.command(help="stop the app: its instances go, its droplet and settings stay")
@click.argument("name")
@PROJECT
def stop(name: str, project: str | None) -> int:
    _action(name, project, "stop")
    return 0


@click.command(help="stop then start the app (every instance anew)")
@click.argument("name")
@PROJECT
def restart(name: str, project: str | None) -> int:
    _action(name, project, "stop", "start")
    return 0


@click.command(help="roll back to an earlier revision (default: the one before the current)")
@click.argument("name")
@click.option("--revision", type=click.IntRange(1), help="the revision to roll back to")
@PROJECT
@AS_JSON
def rollback(name: str, revision: int | None, project: str | None, as_json: bool) -> int:
    with _api() as api:
        target = find(api, name, project)
        body = {"revision": revision} if revision is not None else {}
        service = api.call("POST", f"{target.service}/rollback", body)
    if as_json:
        emit_json(service)
    else:
        print(f"{name}: rolling back to {service.get('image')}")
    return 0


@click.command(help="delete the app with its packages, droplets and instances")
@click.argument("name")
@click.option("-f", "--force", is_flag=True, help="do not ask")
@PROJECT
def delete(name: str, force: bool, project: str | None) -> int:
    with _api() as api:
        target = find(api, name, project)
        if not force:
            if not sys.stdin.isatty():
                raise Failure(f"delete: confirm with -f to delete {name} (no terminal to ask on)")
            click.confirm(f"Delete {name} and everything it runs?", abort=True)
        api.call("DELETE", f"/v3/apps/{target.guid}")
    err().print(f"Deleted {name}", markup=False)
    return 0


@click.command(help="the app's stagings (droplets), oldest first; --logs N prints one's log")
@click.argument("name")
@click.option("--logs", "number", type=click.IntRange(1), help="print staging N's log")
@PROJECT
@AS_JSON
def builds(name: str, number: int | None, project: str | None, as_json: bool) -> int:
    with _api() as api:
        target = find(api, name, project)
        droplets = api.every(f"/v3/apps/{target.guid}/droplets")
        if number is not None:
            if number > len(droplets):
                raise Failure(f"logs: {name} has {len(droplets)} stagings")
            print(api.get(f"/v3/droplets/{droplets[number - 1]['guid']}/logs"), end="")
            return 0
    rows = [
        {
            "number": i,
            "guid": d["guid"],
            "state": d["state"],
            "created_at": d.get("created_at"),
            "buildpack": (d.get("staging_response") or {}).get("buildpack"),
            "error": d.get("error"),
        }
        for i, d in enumerate(droplets, 1)
    ]
    if as_json:
        emit_json(rows)
        return 0
    table = Table("#", "droplet", "state", "created", "buildpack", "error", box=None)
    for row in rows:
        table.add_row(
            str(row["number"]),
            row["guid"],
            row["state"],
            str(row["created_at"] or ""),
            row["buildpack"] or "",
            row["error"] or "",
        )
    _show(table)
    return 0


@click.command(help="the app's logs: the last lines of each instance; -f follows")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines")
@click.option("--tail", type=click.IntRange(0, 10000), help="lines per instance (default 100)")
@PROJECT
def logs(name: str, follow: bool, tail: int | None, project: str | None) -> int:
    with _api() as api:
        target = find(api, name, project)
        params = {"follow": "true" if follow else None, "tail": tail}
        try:
            with api.lines(f"{target.service}/logs", **params) as lines:
                for line in lines:
                    print(line, flush=True)
        except KeyboardInterrupt:
            return 0
    return 0


@click.command(help="the build tag tree: repos, branches, tags, artifacts")
@AS_JSON
def tags(as_json: bool) -> int:
    from rich.tree import Tree

    with _api() as api:
        data = api.get("/api/data")
    if as_json:
        emit_json(data)
        return 0
    root = Tree("repos")
    for repo, body in sorted((data.get("repos") or {}).items()):
        node = root.add(f"{repo}  {body.get('source_url') or ''}".rstrip())
        for branch, b in sorted((body.get("branches") or {}).items()):
            bnode = node.add(branch)
            for tag, t in sorted((b.get("tags") or {}).items()):
                tnode = bnode.add(f"{tag}  {t.get('commit_id') or ''}".rstrip())
                for artifact, a in sorted((t.get("artifacts") or {}).items()):
                    tnode.add(f"{artifact} ({a.get('type')})")
    out().print(root)
    return 0


@click.command(help="follow the event stream (key changes under /lastbackend/PREFIX)")
@click.argument("prefix", default="")
@AS_JSON
def events(prefix: str, as_json: bool) -> int:
    """One line per change: ``kind key``; with ``--json``, each event's data, one per line."""
    with _api() as api:
        try:
            with api.lines("/api/events", prefix=prefix) as lines:
                kind = ""
                for line in lines:
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:") and kind not in ("hello", ""):
                        data = json.loads(line[5:])
                        if as_json:
                            print(json.dumps(data), flush=True)
                        else:
                            print(f"{data.get('kind', kind)} {data.get('key', '')}", flush=True)
        except KeyboardInterrupt:
            return 0
    return 0


COMMANDS = (
    apps,
    app,
    logs,
    scale,
    env,
    set_env,
    unset_env,
    start,
    stop,
    restart,
    rollback,
    delete,
    builds,
    tags,
    events,
)
