"""asyncio's event loop against uvloop's, for the API, side by side in one run (issue 17).

Two ``lastbackend api`` processes on one private etcd, one with ``LB_EVENT_LOOP=asyncio`` and
one with ``LB_EVENT_LOOP=uvloop``, and the rows of ``bench_api.py`` that matter for the choice:
``GET /api/projects/{name}`` at concurrency 64, a list page of 50 over 1,000 projects at 16 and
``POST /api/projects`` at 64. Each row runs against both processes in turn, twice (A B B A), so
drift on a shared machine falls on both; the table gives each loop's rate and p99 and the
uvloop/asyncio rate ratio. uvloop is an optional dependency: without it the script says so.

Run from the repository root::

    .venv/bin/python tests/bench/bench_uvloop.py           # ~1 minute
    .venv/bin/python tests/bench/bench_uvloop.py --quick   # ~25 seconds
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_api import (
    HOST,
    ApiOps,
    OperationFactory,
    Result,
    measure,
    session_for,
    start_api,
    stop_process,
    wait_ready,
)
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support import free_port, local_etcd

LOOPS = ("asyncio", "uvloop")
ROWS: tuple[tuple[str, int], ...] = (("get", 64), ("list", 16), ("post", 64))
NAMES = {"get": "GET /api/projects/{name}", "list": "GET /api/projects (page of 50)"}
NAMES["post"] = "POST /api/projects"


async def run(
    bases: dict[str, URL], pids: dict[str, int], duration: float, warmup: float
) -> dict[tuple[str, str], list[Result]]:
    tag = f"{os.getpid():x}"
    ops = {loop: ApiOps(base, tag) for loop, base in bases.items()}
    await ops["asyncio"].setup()  # one tree: both processes read the same projects
    await ops["uvloop"].sanity_check()
    counters = {(loop, row): itertools.count() for loop in LOOPS for row, _ in ROWS}
    results: dict[tuple[str, str], list[Result]] = {}
    for row, c in ROWS:
        for loop in (*LOOPS, *reversed(LOOPS)):
            make: OperationFactory = getattr(ops[loop], row)
            pid = {"api": pids[loop]}
            async with session_for(c) as session:
                counter = counters[(loop, row)] if row != "post" else counters[("asyncio", row)]
                result = await measure(
                    f"{loop} {NAMES[row]}", make(session), counter, c, duration, warmup, pid
                )
            results.setdefault((row, loop), []).append(result)
    return results


def _rate(results: list[Result]) -> float:
    return sum(r.requests for r in results) / sum(r.seconds for r in results)


def _p99(results: list[Result]) -> float:
    return max(r.percentile(0.99) for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~1 s per row instead of ~3 s")
    args = parser.parse_args(argv)
    duration, warmup = (1.0, 0.2) if args.quick else (3.0, 0.5)
    try:
        import uvloop
    except ImportError:
        print("bench_uvloop: uvloop is not installed (.venv/bin/pip install uvloop)")
        return 2
    if shutil.which("etcd") is None:
        print("bench_uvloop: the etcd binary is not on PATH (Debian: etcd-server)")
        return 2
    with tempfile.TemporaryDirectory(prefix="lb-bench-uvloop-") as tmp:
        work = Path(tmp)
        server = local_etcd(work / "etcd-data", work / "etcd.log")
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            server.start(timeout=30)
            bases: dict[str, URL] = {}
            for loop in LOOPS:
                listen = f"{HOST}:{free_port()}"
                log = work / f"api-{loop}.log"
                procs[loop] = start_api(server.endpoint, listen, log, {"LB_EVENT_LOOP": loop})
                bases[loop] = URL(f"http://{listen}")
                wait_ready(procs[loop], str(bases[loop]), log)
            pids = {loop: proc.pid for loop, proc in procs.items()}
            results = asyncio.run(run(bases, pids, duration, warmup))
        finally:
            for proc in procs.values():
                stop_process(proc)
            server.stop()

    load = os.getloadavg()[0]
    print(
        f"\n## asyncio vs uvloop {uvloop.__version__} for the API"
        f"{' (--quick)' if args.quick else ''}\n\n"
        f"Python {platform.python_version()}, {os.cpu_count()} cores shared by the load "
        f"generator, both API processes and etcd; each row twice per loop (A B B A), "
        f"{duration:g} s each; load average at the end {load:.2f}.\n"
    )
    print(
        "| request | concurrency | asyncio req/s | uvloop req/s | uvloop/asyncio | "
        "asyncio p99 ms | uvloop p99 ms | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row, c in ROWS:
        a, u = results[(row, "asyncio")], results[(row, "uvloop")]
        errors = sum(r.errors for r in a + u)
        print(
            f"| {NAMES[row]} | {c} | {_rate(a):.0f} | {_rate(u):.0f} | "
            f"{_rate(u) / _rate(a):.2f} | {_p99(a):.2f} | {_p99(u):.2f} | {errors} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
