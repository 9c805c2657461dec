"""Latency of AMQP 1.0 events: a build-tag PUT acknowledged -> the message received.

What it runs, on loopback only:

1. A private etcd (:class:`~lastbackend.store.embedded.EmbeddedEtcd` in a temporary directory, on
   free ports), ``lastbackend api`` and ``lastbackend controller`` as two separate processes on
   it (the multi-process install; both with ``LB_LOG_LEVEL=warning``), the controller process
   leading the ``events`` controller and listening for AMQP on a free port
   (``LB_EVENTS_AMQP_LISTEN``).
2. A tag with ``--artifacts`` artifacts (20 by default), so each repo message carries a tree of
   realistic size, and two proton ``BlockingConnection`` receivers in threads of this process:
   one on the artifact's address, one on the repo's (an ancestor: it gets the updated repo).
3. ``--count`` changes (500 by default) after 20 warm-up ones, one at a time: PUT the artifact
   with a new version, note when the response arrived, and wait for both receivers to get the
   message carrying that version (5 s at most; a miss is counted as lost).

It prints a table (count, lost, p50/p90/p99/max in ms) of the PUT round trip itself and of
*PUT acknowledged -> message received* at each address, and whether the p99 of those is under
the aim of 50 ms. A message may arrive before the HTTP response does (etcd's watch can beat the
API's reply); such a latency counts as 0 and the table says how many did. The API, the controller,
etcd and this client share the machine's cores, so these are upper bounds.

Run from the repository root::

    .venv/bin/python tests/bench/bench_amqp.py            # ~15 seconds
    .venv/bin/python tests/bench/bench_amqp.py --count 2000 --artifacts 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
from proton import Timeout
from proton.utils import BlockingConnection

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support import free_port, local_etcd

HOST = "127.0.0.1"
WARMUP = 20
AIM_MS = 50.0
WAIT = 5.0
REPO, BRANCH, TAG, ARTIFACT = "bench", "main", "untested", "bench-client"
TAG_PATH = f"repos/{REPO}/branches/{BRANCH}/tags/{TAG}"
ARTIFACT_PATH = f"{TAG_PATH}/artifacts/{ARTIFACT}"
REPO_PATH = f"repos/{REPO}"


def maven(version: str, artifact_id: str = ARTIFACT) -> dict[str, str]:
    return {
        "type": "maven",
        "repository_url": "https://repo.example.com/maven2",
        "group_id": "org.example.bench",
        "artifact_id": artifact_id,
        "version": version,
    }


# processes ---------------------------------------------------------------------------------------


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _command() -> list[str]:
    script = Path(sys.executable).parent / "lastbackend"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "lastbackend.cli"]


def start(role: str, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*_command(), role, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**clean, "LB_LOG_LEVEL": "warning", **env},
            preexec_fn=_die_with_parent,
        )


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def wait_until(what: str, check: Any, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached in 30 s:\n{tail(log)}")


def ready(base: str) -> bool:
    with urllib.request.urlopen(f"{base}/readyz", timeout=1) as resp:
        return bool(resp.status == 200)


def accepts(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1):
        return True


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# receiving ---------------------------------------------------------------------------------------


class Receiver:
    """A receiver thread noting when each version's message arrived (``perf_counter``)."""

    def __init__(self, port: int, address: str, version_of: Any) -> None:
        self.arrived: dict[str, float] = {}
        self.condition = threading.Condition()
        self._version_of = version_of
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(port, address), daemon=True)
        self._thread.start()
        if not self._ready.wait(15) or self.error is not None:
            raise RuntimeError(f"receiver on {address} did not attach: {self.error!r}")

    def _run(self, port: int, address: str) -> None:
        try:
            conn = BlockingConnection(f"{HOST}:{port}", timeout=5)
            link = conn.create_receiver(address, credit=100)
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    message = link.receive(timeout=0.05)
                except Timeout:
                    continue
                now = time.perf_counter()
                link.accept()
                version = self._version_of(json.loads(message.body))
                with self.condition:
                    self.arrived.setdefault(version, now)
                    self.condition.notify_all()
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def wait_for(self, version: str, timeout: float) -> float | None:
        with self.condition:
            self.condition.wait_for(lambda: version in self.arrived, timeout)
            return self.arrived.get(version)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def artifact_version(body: Any) -> str:
    return str(body["version"])


def repo_version(body: Any) -> str:
    tag = body["branches"][BRANCH]["tags"][TAG]
    return str(tag["artifacts"][ARTIFACT]["version"])


# the run -----------------------------------------------------------------------------------------


class Row:
    def __init__(self, name: str) -> None:
        self.name = name
        self.ms: list[float] = []
        self.lost = 0
        self.early = 0

    def percentile(self, q: float) -> float:
        if not self.ms:
            return math.nan
        ordered = sorted(self.ms)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def run(api: str, amqp_port: int, count: int, artifacts: int) -> list[Row]:
    async with aiohttp.ClientSession(base_url=api) as http:

        async def put(path: str, body: Any) -> None:
            async with http.put(f"/api/{path}", json=body) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"PUT {path}: {resp.status} {await resp.text()}")

        others = {f"lib-{n}": maven("1.0.0", f"lib-{n}") for n in range(artifacts - 1)}
        await put(TAG_PATH, {"build_id": "1", "artifacts": {ARTIFACT: maven("0"), **others}})
        receivers = [
            await asyncio.to_thread(Receiver, amqp_port, ARTIFACT_PATH, artifact_version),
            await asyncio.to_thread(Receiver, amqp_port, REPO_PATH, repo_version),
        ]
        rows = [
            Row("PUT round trip (HTTP, for reference)"),
            Row(f"PUT acked -> message at {ARTIFACT_PATH.replace(TAG_PATH, '<tag>')}"),
            Row(f"PUT acked -> message at {REPO_PATH} (ancestor)"),
        ]
        try:
            for n in range(WARMUP + count):
                version = f"1.0.{n}"
                sent = time.perf_counter()
                await put(ARTIFACT_PATH, maven(version))
                acked = time.perf_counter()
                arrivals = [await asyncio.to_thread(r.wait_for, version, WAIT) for r in receivers]
                if n < WARMUP:
                    continue
                rows[0].ms.append((acked - sent) * 1000)
                for row, arrived in zip(rows[1:], arrivals, strict=True):
                    if arrived is None:
                        row.lost += 1
                        continue
                    if arrived < acked:
                        row.early += 1
                    row.ms.append(max(0.0, arrived - acked) * 1000)
        finally:
            for receiver in receivers:
                await asyncio.to_thread(receiver.close)
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| measurement | count | lost | before ack | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {len(row.ms)} | {row.lost} | {row.early} | "
            f"{row.percentile(0.5):.2f} | {row.percentile(0.9):.2f} | "
            f"{row.percentile(0.99):.2f} | {max(row.ms, default=math.nan):.2f} |"
        )
    return "\n".join(lines)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="measured changes (default 500)")
    parser.add_argument(
        "--artifacts", type=int, default=20, help="artifacts in the tag (default 20)"
    )
    args = parser.parse_args(argv)
    if shutil.which("etcd") is None:
        print("bench_amqp: the etcd binary is not on PATH (Debian: etcd-server)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)

    with tempfile.TemporaryDirectory(prefix="lb-bench-amqp-") as tmp:
        work = Path(tmp)
        server = local_etcd(work / "etcd-data", work / "etcd.log")
        logs = {"api": work / "api.log", "controller": work / "controller.log"}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        amqp_port = free_port()
        try:
            server.start(timeout=30)
            common = ["--etcd", server.endpoint, "--data-dir", str(work / "data")]
            listens = {role: f"{HOST}:{free_port()}" for role in logs}
            for role, log in logs.items():
                env = {"LB_EVENTS_AMQP_LISTEN": f"{HOST}:{amqp_port}"}
                procs[role] = start(role, [*common, "--listen", listens[role]], env, log)
            for role, proc in procs.items():
                base = f"http://{listens[role]}"
                wait_until(f"{role} ready", lambda base=base: ready(base), proc, logs[role])
            wait_until(
                "AMQP listener",
                lambda: accepts(amqp_port),
                procs["controller"],
                logs["controller"],
            )
            print(
                f"etcd {server.endpoint}, API http://{listens['api']}, controller "
                f"(events leader) AMQP {HOST}:{amqp_port}; {WARMUP} warm-up changes, then "
                f"{args.count} measured",
                file=sys.stderr,
            )
            started = time.monotonic()
            rows = asyncio.run(
                run(f"http://{listens['api']}", amqp_port, args.count, max(1, args.artifacts))
            )
            seconds = time.monotonic() - started
        except BaseException:
            for role, log in logs.items():
                print(f"--- {role} log tail ---\n{tail(log)}", file=sys.stderr)
            raise
        finally:
            for proc in procs.values():
                stop(proc)
            server.stop()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    print(
        f"\n## lastbackend AMQP events benchmark\n\n"
        f"Python {platform.python_version()}, {os.cpu_count()} cores shared by this client, "
        f"etcd, `lastbackend api` and `lastbackend controller`; loopback only. {args.count} "
        f"artifact PUTs one at a time (after {WARMUP} warm-up ones) into a tag of "
        f"{max(1, args.artifacts)} artifacts, in {seconds:.1f} s; load average at the end "
        f"{load:.2f}. 'before ack': messages that arrived before the PUT's response (counted "
        f"as 0 ms).\n"
    )
    print(table(rows))
    worst = max(row.percentile(0.99) for row in rows[1:])
    lost = sum(row.lost for row in rows[1:])
    verdict = "PASS" if worst < AIM_MS and not lost else "MISS"
    print(
        f"\nAim: PUT acknowledged -> AMQP message received, p99 under {AIM_MS:g} ms: "
        f"{verdict} (worst p99 {worst:.2f} ms, {lost} lost)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
