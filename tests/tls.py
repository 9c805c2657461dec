"""Test certificates made with the openssl command line, as an operator following the docs would.

One place for the commands, used by the single-member TLS test and the 3-member cluster. Keys are
unencrypted RSA 2048 and valid for a day: they live in a test's tmp dir only.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(cwd: Path, cn: str = "lastbackend-test-ca") -> Path:
    """A self-signed CA as ``ca.crt``/``ca.key`` in ``cwd``; the certificate's path."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-subj", f"/CN={cn}", "-days", "1", cwd=cwd)  # fmt: skip
    return cwd / "ca.crt"


def issue(name: str, cn: str, san: str, cwd: Path) -> tuple[Path, Path]:
    """``name.crt``/``name.key`` signed by the CA in ``cwd``, for the subjectAltName ``san``
    (e.g. ``IP:127.0.0.1,DNS:localhost``); (certificate, key)."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=cwd)  # fmt: skip
    (cwd / f"{name}.ext").write_text(
        f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-out", f"{name}.crt",
            "-extfile", f"{name}.ext", cwd=cwd)  # fmt: skip
    return cwd / f"{name}.crt", cwd / f"{name}.key"
