"""A tree of 100,000 services: controller cold start, and the API process with all of it cached.

Issue 17's last two aims, on loopback only:

1. A private etcd holding 100,000 projects with one service each (replicas 0, with an image),
   written straight into etcd in 128-op transactions with the key layout and encoders the API's
   store uses (``bench_containers.seed``).
2. ``lastbackend controller`` started on it, ``/readyz`` polled: spawn -> the services controller
   leading and synced, with ``VmRSS`` then, and until the first reconcile of every service is done
   (with peak RSS, ``VmHWM``). Twice; the aims are judged on the worse run.
3. ``lastbackend api`` started on it: spawn -> ``/readyz`` 200, then a list page and a GET by name
   (answered from the read cache once it has the 100,000 projects), and ``VmRSS``/``VmHWM`` then.

Run from the repository root (needs ``etcd`` on PATH; no Docker)::

    .venv/bin/python tests/bench/bench_scale.py            # ~3 minutes, most of it seeding
    .venv/bin/python tests/bench/bench_scale.py --quick    # 20,000 services, one run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench_containers import (
    HOST,
    cold_start,
    get_json,
    proc_status_kb,
    say,
    seed,
    spawn,
    stop_process,
    tail,
    verdict,
)

from lastbackend.store.embedded import EmbeddedEtcd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support import free_port

SERVICES = 100_000
AIM_SYNCED_S = 15.0
AIM_RSS_MB = 1024.0


def api_start(work: Path, etcd: str, projects: int) -> dict[str, float]:
    """Spawn -> /readyz 200, then the first list and GET by name, and the process's memory."""
    listen = f"{HOST}:{free_port()}"
    log = work / "api.log"
    proc = spawn(["api", "--etcd", etcd, "--listen", listen, "--log-level", "warning"], log)
    spawned = time.perf_counter()
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the API exited with {proc.returncode}:\n{tail(log)}")
            if get_json(f"http://{listen}/readyz", timeout=5)[0] == 200:
                break
            if time.perf_counter() - spawned > 120:
                raise TimeoutError(f"the API is not ready after 120 s:\n{tail(log)}")
            time.sleep(0.05)
        ready = time.perf_counter() - spawned
        last = f"cold-{projects - 1:06d}"
        timings: dict[str, float] = {"ready": ready}
        for name, path in (
            ("first list", "/api/projects?page=1&per_page=50"),
            ("first get", f"/api/projects/{last}"),
        ):
            asked = time.perf_counter()
            status, body = get_json(f"http://{listen}{path}", timeout=60)
            if status != 200:
                raise RuntimeError(f"GET {path}: {status} {body}")
            timings[name] = time.perf_counter() - asked
        status, body = get_json(f"http://{listen}/api/projects?per_page=1", timeout=60)
        total = (body or {}).get("pagination", {}).get("total_results")
        if total != projects:
            raise RuntimeError(f"the API lists {total} projects, not {projects}")
        time.sleep(1)  # anything the first requests started settles
        timings["rss_mb"] = proc_status_kb(proc.pid, "VmRSS") / 1024
        timings["hwm_mb"] = proc_status_kb(proc.pid, "VmHWM") / 1024
        return timings
    finally:
        stop_process(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 services, one run")
    args = parser.parse_args(argv)
    services, runs = (20_000, 1) if args.quick else (SERVICES, 2)
    with (
        tempfile.TemporaryDirectory(prefix="lb-bench-scale-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        server = EmbeddedEtcd(
            work / "etcd-data",
            client=f"{HOST}:{free_port()}",
            peer=f"{HOST}:{free_port()}",
            log=work / "etcd.log",
        )
        stack.callback(server.stop)
        server.start(timeout=30)
        started = time.perf_counter()
        asyncio.run(seed(server.endpoint, projects=services, per_project=1))
        seeded = time.perf_counter() - started
        say(f"seeded {services} projects with one service each in {seeded:.1f} s")
        pids = [server.proc.pid] if server.proc else []
        colds = []
        for run in range(runs):
            cold = cold_start(work, server.endpoint, pids, run, expected=services, within=120)
            colds.append(cold)
            say(
                f"controller run {run + 1}: synced {cold.synced:.2f} s (RSS "
                f"{cold.rss_synced_mb:.0f} MB), all reconciled {cold.drained:.2f} s, peak RSS "
                f"{cold.hwm_mb:.0f} MB"
            )
        api = api_start(work, server.endpoint, services)
        say(f"API: {api}")

    worst_synced = max(c.synced for c in colds)
    worst_rss = max(c.rss_synced_mb for c in colds)
    worst_hwm = max(c.hwm_mb for c in colds)
    load = os.getloadavg()[0]
    print(
        f"\n## lastbackend at {services:,} services{' (--quick)' if args.quick else ''}\n\n"
        f"Python {platform.python_version()}, {os.cpu_count()} cores shared by etcd, the process "
        f"measured and this script; {services:,} projects with one service each seeded in "
        f"{seeded:.0f} s; load average at the end {load:.2f}.\n"
    )
    print(
        "| process | run | spawn -> synced / ready s | RSS then MB | all reconciled s "
        "| peak RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for i, c in enumerate(colds, 1):
        drained = "n/a" if math.isnan(c.drained) else f"{c.drained:.2f}"
        print(
            f"| controller | {i} | {c.synced:.2f} | {c.rss_synced_mb:.0f} | {drained} "
            f"| {c.hwm_mb:.0f} |"
        )
    print(
        f"| api | 1 | {api['ready']:.2f} (first list {api['first list'] * 1000:.0f} ms, first "
        f"get {api['first get'] * 1000:.0f} ms) | {api['rss_mb']:.0f} | | {api['hwm_mb']:.0f} |"
    )
    print("\n### Aims\n")
    print(
        f"- {verdict(worst_synced, AIM_SYNCED_S)} controller cold start over {services:,} "
        f"services synced < {AIM_SYNCED_S:g} s: worst {worst_synced:.2f} s"
    )
    print(
        f"- {verdict(max(worst_rss, worst_hwm), AIM_RSS_MB)} controller < 1 GB RSS: "
        f"{worst_rss:.0f} MB at synced, peak {worst_hwm:.0f} MB"
    )
    print(
        f"- {verdict(api['hwm_mb'], AIM_RSS_MB)} API process with {services:,} projects cached "
        f"< 1 GB RSS: {api['rss_mb']:.0f} MB, peak {api['hwm_mb']:.0f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
