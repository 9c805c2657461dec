"""A 3-member etcd cluster with TLS on loopback, whose members a test kills, restarts and freezes.

Peers and clients both speak TLS with certificates from :mod:`tests.tls` (one server certificate
for 127.0.0.1 serves every member's client and peer ports; clients present ``client.crt``). Each
member keeps its data directory, so :meth:`EtcdCluster.start` after :meth:`EtcdCluster.kill`
brings back the same member, as an operator restarting a crashed one would. The members get the
embedded etcd's auto-compaction and quota (:mod:`lastbackend.store.embedded`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import attrs

from lastbackend.store.embedded import AUTO_COMPACTION_RETENTION, QUOTA_BACKEND_BYTES
from lastbackend.store.etcd import TLS
from tests.support import free_ports
from tests.tls import issue, make_ca

HOST = "127.0.0.1"


@attrs.define(eq=False)
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    frozen: bool = False

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{HOST}:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """Three etcd members in ``base`` (certificates, data dirs and logs all under it)."""

    def __init__(self, base: Path, *, size: int = 3) -> None:
        if shutil.which("etcd") is None or shutil.which("openssl") is None:
            raise FileNotFoundError("the cluster needs the etcd and openssl binaries")
        self.base = Path(base)
        self.certs = self.base / "certs"
        self.certs.mkdir(parents=True, exist_ok=True)
        make_ca(self.certs)
        issue("server", "localhost", f"IP:{HOST},DNS:localhost", self.certs)
        issue("client", "lastbackend", "DNS:lastbackend", self.certs)
        ports = free_ports(2 * size)
        self.members = [
            Member(
                name=f"m{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=self.base / f"m{i}",
                log=self.base / f"m{i}.log",
            )
            for i in range(size)
        ]
        atexit.register(self.close)
        self._initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        self._token = f"lastbackend-test-{os.getpid()}-{ports[0]}"

    # what clients need -------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def tls(self) -> TLS:
        return TLS(
            ca=self.certs / "ca.crt", cert=self.certs / "client.crt", key=self.certs / "client.key"
        )

    def flags(self) -> list[str]:
        """The command-line flags of a ``lastbackend`` process that uses this cluster."""
        tls = self.tls
        return [
            "--etcd", ",".join(self.endpoints),
            "--etcd-ca", str(tls.ca), "--etcd-cert", str(tls.cert), "--etcd-key", str(tls.key),
        ]  # fmt: skip

    def member(self, endpoint: str) -> Member:
        return next(m for m in self.members if m.endpoint == endpoint)

    # life cycle --------------------------------------------------------------------------------

    def _command(self, m: Member) -> list[str]:
        c = self.certs
        cmd = [
            shutil.which("etcd") or "etcd",
            f"--name={m.name}",
            f"--data-dir={m.data_dir}",
            f"--listen-client-urls=https://{m.endpoint}",
            f"--advertise-client-urls=https://{m.endpoint}",
            f"--listen-peer-urls={m.peer_url}",
            f"--initial-advertise-peer-urls={m.peer_url}",
            f"--initial-cluster={self._initial}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self._token}",
            "--auto-compaction-mode=revision",
            f"--auto-compaction-retention={AUTO_COMPACTION_RETENTION}",
            f"--quota-backend-bytes={QUOTA_BACKEND_BYTES}",
            "--client-cert-auth",
            f"--trusted-ca-file={c / 'ca.crt'}",
            f"--cert-file={c / 'server.crt'}",
            f"--key-file={c / 'server.key'}",
            "--peer-client-cert-auth",
            f"--peer-trusted-ca-file={c / 'ca.crt'}",
            f"--peer-cert-file={c / 'server.crt'}",
            f"--peer-key-file={c / 'server.key'}",
        ]
        # No PR_SET_PDEATHSIG here (embedded.py's way): it fires when the *thread* that
        # started the child ends, and tests restart members from worker threads
        # (asyncio.to_thread). close() and an atexit hook stop the members instead.
        return cmd

    def _spawn(self, m: Member) -> None:
        if m.running:
            return
        m.data_dir.mkdir(parents=True, exist_ok=True)
        m.data_dir.chmod(0o700)
        with m.log.open("ab") as log:
            m.proc = subprocess.Popen(
                self._command(m), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        m.frozen = False

    def start_all(self, timeout: float = 60.0) -> None:
        """Start every member (they must come up together to elect a first leader)."""
        for m in self.members:
            self._spawn(m)
        for m in self.members:
            self.wait_healthy(m, timeout)

    def start(self, m: Member, timeout: float = 30.0) -> None:
        """Restart a killed member on its own data directory and wait until it serves."""
        self._spawn(m)
        self.wait_healthy(m, timeout)

    def kill(self, m: Member) -> None:
        """``kill -9``: no goodbye to the peers, no flush."""
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait()
        m.frozen = False

    def freeze(self, m: Member) -> None:
        """SIGSTOP: the member's sockets stay open and accept, but nothing answers."""
        if m.proc is None or not m.running:
            raise RuntimeError(f"{m.name} is not running")
        m.proc.send_signal(signal.SIGSTOP)
        m.frozen = True

    def thaw(self, m: Member) -> None:
        if m.proc is not None and m.running:
            m.proc.send_signal(signal.SIGCONT)
        m.frozen = False

    def heal(self, timeout: float = 60.0) -> None:
        """Every member running, thawed and healthy, whatever a test left behind."""
        for m in self.members:
            if m.frozen:
                self.thaw(m)
            if not m.running:
                self._spawn(m)
        for m in self.members:
            self.wait_healthy(m, timeout)

    def close(self) -> None:
        for m in self.members:
            self.thaw(m)
            if m.proc is not None and m.proc.poll() is None:
                m.proc.terminate()
        for m in self.members:
            if m.proc is not None:
                try:
                    m.proc.wait(10)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait()

    def __enter__(self) -> EtcdCluster:
        self.start_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # status ------------------------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        tls = self.tls
        context = ssl.create_default_context(cafile=str(tls.ca))
        context.load_cert_chain(str(tls.cert), str(tls.key))
        return context

    def _post(self, m: Member, path: str, body: dict[str, object], timeout: float) -> dict:
        req = urllib.request.Request(
            f"https://{m.endpoint}{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=timeout, context=self._context()) as resp:
            return json.loads(resp.read())

    def status(self, m: Member, timeout: float = 1.0) -> dict | None:
        """The member's maintenance status (etcd's JSON gateway), or None if it does not answer."""
        if not m.running or m.frozen:
            return None
        try:
            return self._post(m, "/v3/maintenance/status", {}, timeout)
        except OSError:
            return None

    def leader(self, timeout: float = 30.0) -> Member:
        """The member that leads now, as the members themselves report it (waits for one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.members:
                st = self.status(m)
                if st and st.get("leader") and st["leader"] == st["header"]["member_id"]:
                    return m
            time.sleep(0.1)
        raise TimeoutError(f"no etcd leader within {timeout}s; see {self.base}/m*.log")

    def followers(self) -> list[Member]:
        leader = self.leader()
        return [m for m in self.members if m is not leader]

    def wait_healthy(self, m: Member, timeout: float = 30.0) -> None:
        """The member answers ``/health`` with a leader (so it serves linearizable reads)."""
        deadline = time.monotonic() + timeout
        url = f"https://{m.endpoint}/health"
        while time.monotonic() < deadline:
            if m.proc is not None and m.proc.poll() is not None:
                raise RuntimeError(
                    f"etcd {m.name} exited with {m.proc.returncode}; see {m.log}:\n"
                    + m.log.read_text(errors="replace")[-2000:]
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(url, timeout=1, context=self._context()) as resp,
            ):
                if b'"true"' in resp.read():
                    return
            time.sleep(0.05)
        raise TimeoutError(f"etcd {m.name} not healthy after {timeout}s; see {m.log}")
