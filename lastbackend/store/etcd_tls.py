"""The embedded etcd's TLS credentials: a private CA, a server and a client certificate.

Why: on loopback etcd is reachable by every local user, and etcd without auth lets whoever
connects write any key (a pod spec, a node's address). With ``--client-cert-auth`` etcd accepts
only clients presenting a certificate from its CA, so the credential is a file, and file
permissions decide who may talk to the store: the directory is 0700 and every file 0600, owned by
the daemon's user. ``lastbackend tree`` and the other subcommands read the same files.

The set lives in ``<data_dir>/etcd-tls`` (:attr:`~lastbackend.config.Settings.embedded_tls_dir`)
and is made in-process with ``cryptography`` at the first start: ECDSA P-256 keys, valid for ten
years from an hour ago (there is no rotation to forget), the server certificate for loopback
(``127.0.0.1``, ``::1``, ``localhost``) and the hosts etcd listens on, also used on the peer port.
It is written into a temporary sibling directory and renamed into place, so a crash leaves either
the complete old set, the complete new set, or none (made again at the next start). Later starts
reuse it; a set that is incomplete, unparsable, not signed by its CA, within 30 days of expiry,
or not covering the listen hosts is replaced whole, CA included.

The CA key is kept (0600 like the rest) so an admin can issue more client certificates with
``openssl``; reading it gives no more than reading ``client.key`` already does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lastbackend.model.certificates import key_pem
from lastbackend.store.etcd import TLS

VALIDITY = timedelta(days=3652)
"""Ten years, for the CA and both certificates."""
RENEW_BEFORE = timedelta(days=30)
"""A set that expires sooner than this is made again at the next start."""
BACKDATE = timedelta(hours=1)
LOOPBACK = ("127.0.0.1", "::1", "localhost")
"""Names the server certificate always covers."""
_TEMP_PREFIX = ".etcd-tls-"


class CredentialsError(RuntimeError):
    """The client credentials cannot be used; the message says what to do."""


@attrs.frozen
class Credentials:
    """The paths of one set; nothing here reads them."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"

    @property
    def files(self) -> tuple[Path, ...]:
        return (
            self.ca,
            self.ca_key,
            self.server_cert,
            self.server_key,
            self.client_cert,
            self.client_key,
        )

    @property
    def client_tls(self) -> TLS:
        return TLS(self.ca, self.client_cert, self.client_key)


def ensure(directory: Path, hosts: Iterable[str] = ()) -> Credentials:
    """The set in ``directory``, made (or made again) when it is missing or unusable; the
    server certificate covers :data:`LOOPBACK` and ``hosts``."""
    creds = Credentials(Path(directory))
    names = _names(hosts)
    parent = creds.directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f"{_TEMP_PREFIX}*"):  # what a crash mid-write left behind
        shutil.rmtree(stale, ignore_errors=True)
    if _usable(creds, names, datetime.now(UTC)):
        creds.directory.chmod(0o700)
        for path in creds.files:
            path.chmod(0o600)
        return creds
    _replace(creds, names)
    return creds


def client_tls(directory: Path) -> TLS:
    """The client half of the set in ``directory``, each file checked readable, for processes
    that talk to the embedded etcd; :class:`CredentialsError` says why not."""
    creds = Credentials(Path(directory))
    for path in (creds.ca, creds.client_cert, creds.client_key):
        try:
            with path.open("rb"):
                pass
        except PermissionError:
            raise CredentialsError(
                f"cannot read {path}: run as the daemon's user (the embedded etcd accepts only "
                "clients with its certificates)"
            ) from None
        except FileNotFoundError:
            raise CredentialsError(
                f"{path} does not exist: the embedded etcd's credentials are made by "
                "`lastbackend daemon` at its first start; give its data directory "
                "(--data-dir, LB_DATA_DIR), or --etcd with --etcd-ca/--etcd-cert/--etcd-key"
            ) from None
        except OSError as exc:
            raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None
    return creds.client_tls


def _names(hosts: Iterable[str]) -> tuple[str, ...]:
    names = list(LOOPBACK)
    for host in hosts:
        host = host.strip("[]").lower()
        if host and host not in names:
            names.append(host)
    return tuple(names)


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _covered(cert: x509.Certificate, names: tuple[str, ...]) -> bool:
    try:
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = {str(ip) for ip in have.get_values_for_type(x509.IPAddress)}
    present |= {dns.lower() for dns in have.get_values_for_type(x509.DNSName)}
    return all(str(entry.value).lower() in present for entry in _san(names))


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _usable(creds: Credentials, names: tuple[str, ...], now: datetime) -> bool:
    if not creds.directory.is_dir():
        return False
    try:
        ca = x509.load_pem_x509_certificate(creds.ca.read_bytes())
        ca_key = _load_key(creds.ca_key)
        pairs = [
            (x509.load_pem_x509_certificate(cert.read_bytes()), _load_key(key))
            for cert, key in (
                (creds.server_cert, creds.server_key),
                (creds.client_cert, creds.client_key),
            )
        ]
        if ca_key is None or ca_key.public_key() != ca.public_key():
            return False
        for cert, key in [(ca, ca_key), *pairs]:
            if key is None or key.public_key() != cert.public_key():
                return False
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc - RENEW_BEFORE:
                return False
            if cert is not ca:
                cert.verify_directly_issued_by(ca)
        return _covered(pairs[0][0], names)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False


def _replace(creds: Credentials, names: tuple[str, ...]) -> None:
    """Write a new set beside ``creds.directory`` and rename it into place."""
    parent = creds.directory.parent
    temp = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=parent))  # mode 0700
    try:
        for path, data in _generate(names).items():
            _write(temp / path, data)
        _fsync(temp)
        if creds.directory.exists():
            old = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=parent))
            os.rename(creds.directory, old / "old")
        os.rename(temp, creds.directory)
        _fsync(parent)
    finally:
        for stale in parent.glob(f"{_TEMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _fsync(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _generate(names: tuple[str, ...]) -> dict[str, bytes]:
    """File name -> PEM: the CA, the server pair (serving and peer), the client pair."""
    now = datetime.now(UTC)
    start, end = now - BACKDATE, now + VALIDITY
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lastbackend embedded etcd CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str, purposes: list[x509.ObjectIdentifier], san: x509.SubjectAlternativeName
    ) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
            .add_extension(san, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key).encode()

    server_cert, server_key = leaf(
        "lastbackend embedded etcd",
        # the peer port uses the same pair, as server and as client
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        _san(names),
    )
    client_cert, client_key = leaf(
        "lastbackend",
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        x509.SubjectAlternativeName([x509.DNSName("lastbackend")]),
    )
    return {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": key_pem(ca_key).encode(),
        "server.crt": server_cert,
        "server.key": server_key,
        "client.crt": client_cert,
        "client.key": client_key,
    }


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
