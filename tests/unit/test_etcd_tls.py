"""The embedded etcd's credentials on disk: made once, private, whole, reused, replaced whole.

The server side (etcd refusing clients without them) is ``tests/security/test_embedded_etcd.py``;
here only the files, as a crash, a copy with wrong modes or a changed listen host leave them.
"""

from __future__ import annotations

import ipaddress
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from lastbackend.store import etcd_tls

NAMES = ["ca.crt", "ca.key", "client.crt", "client.key", "server.crt", "server.key"]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_first_start_makes_a_private_complete_set(tmp_path: Path) -> None:
    creds = etcd_tls.ensure(tmp_path / "etcd-tls", ["127.0.0.1"])
    assert sorted(p.name for p in creds.directory.iterdir()) == NAMES
    assert creds.directory.stat().st_mode & 0o777 == 0o700
    for path in creds.files:
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etcd-tls"], "no temporary leftovers"

    ca, server, client = _cert(creds.ca), _cert(creds.server_cert), _cert(creds.client_cert)
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    now = datetime.now(UTC)
    assert ca.not_valid_after_utc - now > timedelta(days=3650), "ten years: nothing to rotate"
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]


def test_python_tls_accepts_the_pair_for_127_0_0_1(tmp_path: Path) -> None:
    creds = etcd_tls.ensure(tmp_path / "etcd-tls")
    context = ssl.create_default_context(cafile=creds.ca)
    context.load_cert_chain(creds.client_cert, creds.client_key)  # a matching pair loads
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=creds.ca)
    server.load_cert_chain(creds.server_cert, creds.server_key)


def test_a_later_start_reuses_the_set_and_repairs_modes(tmp_path: Path) -> None:
    creds = etcd_tls.ensure(tmp_path / "etcd-tls")
    before = _contents(creds.directory)
    creds.client_key.chmod(0o644)
    creds.directory.chmod(0o755)
    etcd_tls.ensure(creds.directory)
    assert _contents(creds.directory) == before
    assert creds.client_key.stat().st_mode & 0o777 == 0o600
    assert creds.directory.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "damage",
    [
        lambda c: c.client_key.unlink(),
        lambda c: c.ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n"),
        lambda c: c.server_key.write_bytes(c.client_key.read_bytes()),  # not the server's key
    ],
    ids=["missing file", "unparsable CA", "key of another certificate"],
)
def test_a_broken_set_is_replaced_whole(tmp_path: Path, damage: object) -> None:
    creds = etcd_tls.ensure(tmp_path / "etcd-tls")
    old_ca = creds.ca.read_bytes()
    damage(creds)  # type: ignore[operator]
    etcd_tls.ensure(creds.directory)
    assert sorted(p.name for p in creds.directory.iterdir()) == NAMES
    assert creds.ca.read_bytes() != old_ca, "the CA too: every file is of one set"
    _cert(creds.server_cert).verify_directly_issued_by(_cert(creds.ca))


def test_a_new_listen_host_gets_a_server_certificate_for_it(tmp_path: Path) -> None:
    creds = etcd_tls.ensure(tmp_path / "etcd-tls", ["127.0.0.1"])
    etcd_tls.ensure(creds.directory, ["10.1.2.3", "etcd.internal"])
    sans = _cert(creds.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert ipaddress.ip_address("10.1.2.3") in sans.value.get_values_for_type(x509.IPAddress)
    assert "etcd.internal" in sans.value.get_values_for_type(x509.DNSName)


def test_a_crash_mid_write_leaves_the_old_set_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = etcd_tls._write
    written: list[Path] = []

    def crash_on_the_fourth(path: Path, data: bytes) -> None:
        if len(written) == 3:
            raise OSError(28, "No space left on device")
        written.append(path)
        real(path, data)

    monkeypatch.setattr(etcd_tls, "_write", crash_on_the_fourth)
    with pytest.raises(OSError, match="No space left"):
        etcd_tls.ensure(tmp_path / "etcd-tls")
    assert list(tmp_path.iterdir()) == [], "no half set, no temporary directory"

    monkeypatch.setattr(etcd_tls, "_write", real)
    creds = etcd_tls.ensure(tmp_path / "etcd-tls")
    before = _contents(creds.directory)
    creds.client_cert.unlink()
    written.clear()
    monkeypatch.setattr(etcd_tls, "_write", crash_on_the_fourth)
    with pytest.raises(OSError, match="No space left"):
        etcd_tls.ensure(creds.directory)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etcd-tls"]
    assert _contents(creds.directory) == {k: v for k, v in before.items() if k != "client.crt"}


def test_leftovers_of_a_killed_start_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".etcd-tls-abc123").mkdir()
    (tmp_path / ".etcd-tls-abc123" / "ca.key").write_bytes(b"half")
    etcd_tls.ensure(tmp_path / "etcd-tls")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etcd-tls"]


def test_client_tls_names_an_unreadable_or_missing_file(tmp_path: Path) -> None:
    with pytest.raises(etcd_tls.CredentialsError, match=r"ca\.crt does not exist: .*daemon"):
        etcd_tls.client_tls(tmp_path / "etcd-tls")
    creds = etcd_tls.ensure(tmp_path / "etcd-tls")
    tls = etcd_tls.client_tls(creds.directory)
    assert (tls.ca, tls.cert, tls.key) == (creds.ca, creds.client_cert, creds.client_key)
