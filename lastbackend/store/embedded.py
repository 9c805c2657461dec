"""A private etcd server, started and stopped by the process that owns it.

``lastbackend daemon`` uses it when no ``--etcd`` endpoint is configured (the embedded default),
and the test fixtures use it to get a real server on free ports. The child gets
``PR_SET_PDEATHSIG`` so that an owner killed with ``kill -9`` does not leave an etcd holding the
data directory's lock.

The death signal is set by util-linux's ``setpriv --pdeathsig`` where it exists, not by a
``preexec_fn``: Python code between fork and exec runs the fork handlers of every library in
the parent, and gRPC's restarts its poller in the child, which then aborts (SIGABRT) when
``close_fds`` closes that poller's epoll descriptor. CI saw exactly that, once in a few hundred
restarts. Without ``preexec_fn`` subprocess forks with no Python in the child at all.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EtcdNotFound(RuntimeError):
    pass


class EmbeddedEtcd:
    """One single-member etcd cluster in ``data_dir``, listening on loopback."""

    def __init__(
        self,
        data_dir: Path,
        *,
        client: str = "127.0.0.1:23790",
        peer: str = "127.0.0.1:23800",
        binary: str = "etcd",
        log: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.client = client
        self.peer = peer
        self.binary = binary
        self.log = log or self.data_dir.parent / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return self.client

    def command(self) -> list[str]:
        path = shutil.which(self.binary)
        if path is None:
            raise EtcdNotFound(
                f"{self.binary!r} is not on PATH: install Debian's etcd-server "
                "or pass --etcd host:port to use an existing cluster"
            )
        return [
            path,
            "--name=lastbackend",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls=http://{self.client}",
            f"--advertise-client-urls=http://{self.client}",
            f"--listen-peer-urls=http://{self.peer}",
            f"--initial-advertise-peer-urls=http://{self.peer}",
            f"--initial-cluster=lastbackend=http://{self.peer}",
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=100000",
            "--quota-backend-bytes=4294967296",
        ]

    def start(self, timeout: float = 30.0) -> None:
        self.spawn()
        self.wait_healthy(timeout)

    def spawn(self) -> None:
        """Start the process without waiting for it to be healthy."""
        if self.proc and self.proc.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        cmd = self.command()
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=None if setpriv is not None else _die_with_parent,
            )

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"etcd exited with {self.proc.returncode}; see {self.log}:\n"
                    + self.log.read_text(errors="replace")[-2000:]
                )
            try:
                with urllib.request.urlopen(f"http://{self.client}/health", timeout=1) as resp:
                    if b'"true"' in resp.read():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"etcd on {self.client} not healthy after {timeout}s; see {self.log}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
