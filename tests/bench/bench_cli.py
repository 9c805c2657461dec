"""``lastbackend push`` of a static site, from the command's start to its URL answering, against
the same steps made by raw HTTP calls in this process.

Setup: a private etcd (:class:`~lastbackend.store.embedded.EmbeddedEtcd` in a temporary
directory, on free ports) and ``lastbackend daemon`` with its router (Caddy) on free loopback
ports, node ``bench-<hex>``, on the local Docker engine; the default stack (busybox, built
offline) is built first if missing, outside the clock.

Each run times, alternately (so both see the same machine):

- **CLI**: ``lastbackend push NAME -p DIR --project bench`` as a subprocess (``LB_URL`` set, no
  terminal: no progress rendering), from spawning it until ``GET /`` through the router (the
  app's host in ``Host``) answers 200 with the page just written. The CLI returns once the
  rollout of the new droplet is ``complete``; the page is then fetched.
- **raw**: the same calls from this process with one ``httpx`` client: find or create the
  project and the app, create a bits package, pack the directory (the CLI's own packer: same
  bytes), upload it, create the droplet, read its followed log to the end, read the droplet,
  assign it, start the app when stopped, poll the service and its newest revision every 150 ms
  until the rollout of the droplet's image is complete, or for a first start until every
  instance runs and is ready (what the CLI waits for), then the same page check.

**unchanged** pushes the warm app's directory again as it is: the CLI finds the running
droplet staged from the same sha1 and stages nothing (no raw counterpart).

**cold** is a new app's first push (a new app name per run); **warm** pushes new content to an
app that already runs (a rolling update: the new container must be ready for ``min_ready``,
3 s by default, before the rollout counts it). The CLI's overhead is its p50 minus raw's.

Run from the repository root (needs ``etcd``, ``caddy``, a static ``busybox`` and Docker)::

    .venv/bin/python tests/bench/bench_cli.py            # ~3 minutes
    .venv/bin/python tests/bench/bench_cli.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
# The sibling benchmarks' helpers (this file runs as a script, from its own directory).
from bench_containers import (
    _die_with_parent,
    docker_api,
    get_json,
    percentile,
    say,
    stop_process,
    sweep_node,
    tail,
)
from bench_staging import remove_app_images

from lastbackend.cli import pack
from lastbackend.lifecycle import descriptor as lifecycle_descriptor
from lastbackend.lifecycle import stacks
from lastbackend.runtime.docker import DockerRuntime
from tests.support import free_port, local_etcd

HOST = "127.0.0.1"
AIM_WARM_S = 3.0
AIM_OVERHEAD_S = 0.3


def lastbackend() -> str:
    script = Path(sys.executable).parent / "lastbackend"
    return str(script) if script.exists() else shutil.which("lastbackend") or "lastbackend"


def ensure_stack() -> None:
    async def build() -> None:
        runtime = DockerRuntime(os.environ.get("DOCKER_HOST") or None)
        try:
            descriptor = lifecycle_descriptor.load(None)
            await stacks.ensure_stack(
                runtime, stacks.DEFAULT_STACK, descriptor, Path(shutil.which("busybox") or "")
            )
        finally:
            await runtime.close()

    asyncio.run(build())


def start_daemon(work: Path, etcd: str, node: str) -> tuple[subprocess.Popen[bytes], str, int]:
    listen, router = f"{HOST}:{free_port()}", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LB_", "CNB_"))}
    env.update(LB_EVENTS_AMQP_LISTEN="off", LB_DEFAULT_STACK="busybox")
    args = ["daemon", "--etcd", etcd, "--listen", listen, "--name", node]
    args += ["--router-http", f"{HOST}:{router}", "--router-https", f"{HOST}:{free_port()}"]
    args += ["--data-dir", str(work / "daemon-data"), "--log-level", "info"]
    with open(work / "daemon.log", "ab") as out:
        proc = subprocess.Popen(
            [lastbackend(), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,
        )
    deadline = time.monotonic() + 60
    while get_json(f"http://{listen}/readyz")[0] != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the daemon is not ready:\n{tail(work / 'daemon.log')}")
        time.sleep(0.05)
    return proc, f"http://{listen}", router


def answers(router: int, host: str, text: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    with httpx.Client(timeout=2) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                r = http.get(f"http://{HOST}:{router}/", headers={"Host": host})
                if r.status_code == 200 and r.text == text:
                    return
            time.sleep(0.01)
    raise TimeoutError(f"{host} did not serve the new page within {within}s")


def cli_push(url: str, name: str, directory: Path, home: Path, marks: dict[str, float]) -> None:
    """The installed script; ``marks["own"]``: the time it reports (its clock starts after its
    imports, so the rest of the total is the interpreter's start-up and the page check)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    env.update(LB_URL=url, XDG_CONFIG_HOME=str(home), NO_COLOR="1")
    done = subprocess.run(
        [lastbackend(), "push", name, "-p", str(directory), "--project", "bench"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"push failed ({done.returncode}):\n{done.stderr[-3000:]}")
    own = re.search(r"is running \(([0-9.]+)s\)", done.stderr)
    marks["own"] = float(own[1]) if own else math.nan
    marks["skipped"] = float("staging skipped" in done.stderr)


def raw_push(url: str, name: str, directory: Path, marks: dict[str, float]) -> None:
    """The push's calls, one after the other, as a script would make them; ``marks`` gets the
    monotonic time after the upload, after staging and after the assign."""
    with httpx.Client(base_url=url, timeout=30) as http:

        def call(method: str, path: str, **kw: Any) -> Any:
            r = http.request(method, path, **kw)
            r.raise_for_status()
            return r.json() if r.content else None

        r = http.get("/api/projects/bench")
        project = (
            r.json()
            if r.status_code == 200
            else call("POST", "/api/projects", json={"name": "bench"})
        )
        pid = project["id"]
        listed = call("GET", "/v3/apps", params={"names": name, "space_guids": pid})["resources"]
        app = (
            listed[0]
            if listed
            else call(
                "POST", "/v3/apps", json={"name": name, "relationships": {"space": {"guid": pid}}}
            )
        )
        guid = app["guid"]
        package = call("POST", f"/v3/apps/{guid}/packages", json={"type": "bits"})
        with tempfile.TemporaryDirectory() as tmp:
            packed = pack.pack(directory, Path(tmp) / "app.tar.gz")
            with packed.path.open("rb") as raw:
                call(
                    "POST",
                    f"/v3/packages/{package['guid']}/upload",
                    files={"bits": ("app.tar.gz", raw)},
                )
        marks["uploaded"] = time.monotonic()
        droplet = call("POST", f"/v3/packages/{package['guid']}/droplets", json={})
        with http.stream(
            "GET", f"/v3/droplets/{droplet['guid']}/logs", params={"follow": "true"}, timeout=None
        ) as log:
            for _ in log.iter_lines():
                pass
        droplet = call("GET", f"/v3/droplets/{droplet['guid']}")
        while droplet["state"] not in ("STAGED", "FAILED"):
            time.sleep(0.2)
            droplet = call("GET", f"/v3/droplets/{droplet['guid']}")
        if droplet["state"] != "STAGED":
            raise RuntimeError(f"staging failed: {droplet.get('error')}")
        marks["staged"] = time.monotonic()
        call(
            "PATCH",
            f"/v3/apps/{guid}/relationships/current_droplet",
            json={"data": {"guid": droplet["guid"]}},
        )
        first = app["desired_state"] != "STARTED"
        if first:
            call("POST", f"/v3/apps/{guid}/actions/start")
        marks["assigned"] = time.monotonic()
        base = f"/api/projects/{pid}/services/{guid}"

        def all_ready() -> bool:  # a first start: every instance runs and passes its check
            found = call("GET", f"{base}/containers")["resources"]
            ready = [c for c in found if c["status"] == "running" and c.get("ready")]
            return len(ready) >= 1 == len(found)

        while True:
            rollout = (call("GET", base).get("status") or {}).get("rollout") or {}
            newest = call("GET", f"{base}/revisions", params={"per_page": 1})["resources"]
            if (
                newest
                and newest[0]["spec"].get("image") == droplet["image"]
                and rollout.get("revision") == newest[0]["revision"]
                and (rollout.get("state") in ("complete", "failed") or (first and all_ready()))
            ):
                marks["complete"] = time.monotonic()
                return
            time.sleep(0.15)


def timed(
    push: Callable[[], None], router: int, host: str, text: str, marks: dict[str, float]
) -> float:
    started = marks["start"] = time.monotonic()
    push()
    answers(router, host, text)
    marks["served"] = time.monotonic()
    return marks["served"] - started


LABELS = {
    ("cold", "assign (+ start: cold)"): "assign + start",
    ("warm", "assign (+ start: cold)"): "assign",
    ("cold", "assign -> ready"): "assign -> every instance ready",
    ("warm", "assign -> ready"): "assign -> rollout complete (includes min_ready, 3 s)",
}
SPLITS = (
    ("start", "uploaded", "pack + project/app/package calls + upload"),
    ("uploaded", "staged", "droplet create -> STAGED (followed log)"),
    ("staged", "assigned", "assign (+ start: cold)"),
    ("assigned", "complete", "assign -> ready"),
    ("complete", "served", "then -> page through the router"),
)


def row(label: str, values: list[float], aim: str = "", result: str = "") -> str:
    cells = " | ".join(f"{percentile(values, q):.3f}" for q in (0.5, 0.99))
    return f"| {label} | {len(values)} | s | {cells} | {max(values):.3f} | {aim} | {result} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    for binary in ("etcd", "caddy", "busybox"):
        if shutil.which(binary) is None:
            parser.error(f"{binary} is not installed")
    node = f"bench-{uuid.uuid4().hex[:8]}"
    client = docker_api()
    kinds = ("cli cold", "raw cold", "cli warm", "raw warm")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    splits: dict[str, list[float]] = {}
    own: dict[str, list[float]] = {}
    apps: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        say("stack: busybox (built if missing, not timed)")
        ensure_stack()
        server = local_etcd(work / "etcd", work / "etcd.log")
        stack.callback(server.stop)
        server.start(timeout=30)
        daemon, url, router = start_daemon(work, server.endpoint, node)
        stack.callback(lambda: sweep_node(client, node))
        stack.callback(stop_process, daemon)
        say(f"daemon {url}, router {HOST}:{router}, node {node}")
        try:
            for i in range(args.runs):
                for kind in ("cli", "raw"):
                    name = f"{kind}-{i}"
                    directory = work / name
                    directory.mkdir()
                    host = f"{name}.bench.lb.localhost"
                    for temperature in ("cold", "warm", "unchanged"):
                        if temperature == "unchanged" and kind == "raw":
                            continue  # the skip is the CLI's own decision
                        if temperature != "unchanged":
                            text = f"<h1>{name} {temperature}</h1>\n"
                            (directory / "index.html").write_text(text)
                        marks: dict[str, float] = {}
                        push = functools.partial(
                            *(
                                (cli_push, url, name, directory, work, marks)
                                if kind == "cli"
                                else (raw_push, url, name, directory, marks)
                            )
                        )
                        seconds = timed(push, router, host, text, marks)
                        if kind == "raw":
                            for a, b, label in SPLITS:
                                label = LABELS.get((temperature, label), label)
                                key = f"{temperature}: raw: {label}"
                                splits.setdefault(key, []).append(marks[b] - marks[a])
                        times.setdefault(f"{kind} {temperature}", []).append(seconds)
                        if kind == "cli":
                            own.setdefault(temperature, []).append(marks["own"])
                            if temperature == "unchanged":
                                assert marks["skipped"], "the unchanged push staged again"
                        say(f"  run {i + 1} {kind} {temperature}: {seconds:.3f} s")
                    apps.append(name)
        except BaseException:
            say(f"--- daemon log tail ---\n{tail(work / 'daemon.log')}")
            raise
        finally:
            with httpx.Client(base_url=url, timeout=30) as http:
                for app in http.get("/v3/apps").json().get("resources", []):
                    remove_app_images(client, app["guid"])
    overhead_cold = percentile(times["cli cold"], 0.5) - percentile(times["raw cold"], 0.5)
    overhead_warm = percentile(times["cli warm"], 0.5) - percentile(times["raw warm"], 0.5)
    warm_p99 = percentile(times["cli warm"], 0.99)
    print(f"cores: {os.cpu_count()}; runs: {args.runs}")
    print("| measurement | n | unit | p50 | p99 | max | aim | result |")
    print("|---|--:|---|--:|--:|--:|---|---|")
    print(row("cold: `lastbackend push` start -> URL serves the page", times["cli cold"]))
    print(row("cold: raw HTTP calls, same steps", times["raw cold"]))
    print(
        row(
            "warm: `lastbackend push` start -> URL serves the new page",
            times["cli warm"],
            f"p99 < {AIM_WARM_S:.0f} s",
            "PASS" if warm_p99 < AIM_WARM_S else "MISS",
        )
    )
    print(row("warm: raw HTTP calls, same steps", times["raw warm"]))
    print(row("unchanged: `lastbackend push` (staging skipped) -> URL", times["cli unchanged"]))
    for temperature, values in own.items():
        print(row(f"   {temperature}: the CLI's own clock (after its imports)", values))
    for label, values in splits.items():
        print(row(f"   {label}", values))
    for label, value in (("cold", overhead_cold), ("warm", overhead_warm)):
        verdict = "PASS" if value < AIM_OVERHEAD_S else "MISS"
        print(
            f"| CLI overhead, {label} (p50 CLI - p50 raw) | | s | {value:.3f} | | | "
            f"< {AIM_OVERHEAD_S * 1000:.0f} ms | {verdict} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
