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

With ``tls_dir`` (the daemon always passes one) both ports speak TLS and demand a client
certificate from the credentials :mod:`lastbackend.store.etcd_tls` keeps there, so a local process
without read access to that directory can neither use the store nor pose as a peer. Without it
(the test fixtures, for speed) the server is plain HTTP, open to every local user.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from lastbackend.store import etcd_tls
from lastbackend.store.etcd import TLS

_PR_SET_PDEATHSIG = 1

# Revisions of history kept: enough for every watch and informer to resume after a pause (a
# relist past it is correct, only slower), and a bound on the backend's growth. deploy/compose.yaml
# gives its members the same two settings (tests/unit/test_compose.py holds them together).
AUTO_COMPACTION_RETENTION = 100_000
QUOTA_BACKEND_BYTES = 4 * 1024**3


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
        tls_dir: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.client = client
        self.peer = peer
        self.binary = binary
        self.log = log or self.data_dir.parent / "etcd.log"
        self.credentials = etcd_tls.Credentials(Path(tls_dir)) if tls_dir is not None else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``host:port`` for :class:`~lastbackend.store.etcd.Etcd`, with :attr:`client_tls`."""
        return self.client

    @property
    def client_tls(self) -> TLS | None:
        """What a client must present: None for a plain-HTTP server."""
        return self.credentials.client_tls if self.credentials is not None else None

    @property
    def scheme(self) -> str:
        return "https" if self.credentials is not None else "http"

    def command(self) -> list[str]:
        path = shutil.which(self.binary)
        if path is None:
            raise EtcdNotFound(
                f"{self.binary!r} is not on PATH: install Debian's etcd-server "
                "or pass --etcd host:port to use an existing cluster"
            )
        s = self.scheme
        cmd = [
            path,
            "--name=lastbackend",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={s}://{self.client}",
            f"--advertise-client-urls={s}://{self.client}",
            f"--listen-peer-urls={s}://{self.peer}",
            f"--initial-advertise-peer-urls={s}://{self.peer}",
            f"--initial-cluster=lastbackend={s}://{self.peer}",
            "--auto-compaction-mode=revision",
            f"--auto-compaction-retention={AUTO_COMPACTION_RETENTION}",
            f"--quota-backend-bytes={QUOTA_BACKEND_BYTES}",
        ]
        if self.credentials is not None:
            c = self.credentials
            cmd += [
                "--client-cert-auth",
                f"--trusted-ca-file={c.ca}",
                f"--cert-file={c.server_cert}",
                f"--key-file={c.server_key}",
                "--peer-client-cert-auth",
                f"--peer-trusted-ca-file={c.ca}",
                f"--peer-cert-file={c.server_cert}",
                f"--peer-key-file={c.server_key}",
            ]
        return cmd

    def start(self, timeout: float = 30.0) -> None:
        self.spawn()
        self.wait_healthy(timeout)

    def spawn(self) -> None:
        """Start the process without waiting for it to be healthy."""
        if self.proc and self.proc.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if self.credentials is not None:
            hosts = (self.client.rsplit(":", 1)[0], self.peer.rsplit(":", 1)[0])
            etcd_tls.ensure(self.credentials.directory, hosts)
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

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.credentials is None:
            return None
        context = ssl.create_default_context(cafile=self.credentials.ca)
        context.load_cert_chain(self.credentials.client_cert, self.credentials.client_key)
        return context

    def wait_healthy(self, timeout: float) -> None:
        context = self._ssl_context()
        url = f"{self.scheme}://{self.client}/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"etcd exited with {self.proc.returncode}; see {self.log}:\n"
                    + self.log.read_text(errors="replace")[-2000:]
                )
            try:
                with urllib.request.urlopen(url, timeout=1, context=context) as resp:
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
