"""The certificate checks without servers: parsing, key match, coverage, validity, chains, the CA.

Every certificate here is made by :class:`Pki` with ``cryptography``, so each case is exactly the
one it names (the integration tests of ``/api/certificates`` use the same helpers). ECDSA keys
keep it fast; one RSA case checks the other common key type.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lastbackend.model.certificates import (
    CA_COMMON_NAME,
    CertificateProblems,
    RouterCA,
    check_certificate,
    leaf_covers,
    make_ca,
    parse_chain,
    parse_key,
)

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def key_text(key: PrivateKey, fmt: serialization.PrivateFormat | None = None) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        fmt or serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def cert_text(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


@attrs.frozen
class Issued:
    """A leaf, its key and the chain above it, as PEM text ready for a request body."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def pem(self) -> str:
        return cert_text(self.cert, *self.chain)

    @property
    def key_pem(self) -> str:
        return key_text(self.key)

    def body(self) -> dict[str, str]:
        return {"certificate": self.pem, "private_key": self.key_pem}


class Pki:
    """A test root and an intermediate under it, issuing leaves with whatever flaw a test needs."""

    def __init__(self, name: str = "Test") -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._ca(f"{name} Root", self.root_key, self.root_key, None)
        self.inter_key = ec.generate_private_key(ec.SECP256R1())
        self.inter = self._ca(f"{name} Intermediate", self.inter_key, self.root_key, self.root)

    @staticmethod
    def _ca(
        cn: str, key: PrivateKey, signer: PrivateKey, parent: x509.Certificate | None
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(parent.subject if parent else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - 30 * DAY)
            .not_valid_after(NOW + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )

    def leaf(
        self,
        *sans: str,
        cn: str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        key: PrivateKey | None = None,
        usage: list[x509.ObjectIdentifier] | None = None,
        signer: PrivateKey | None = None,
    ) -> Issued:
        """A leaf for ``sans`` (no SAN extension when empty) issued by the intermediate."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.inter.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - DAY)
            .not_valid_after(not_after or NOW + 90 * DAY)
        )
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False
            )
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        cert = builder.sign(signer or self.inter_key, hashes.SHA256())
        return Issued(cert, key, (self.inter,))


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def problems(host: str, certificate: str, private_key: str) -> list[tuple[str, str]]:
    with pytest.raises(CertificateProblems) as info:
        check_certificate(host, certificate, private_key, at=NOW)
    assert info.value.problems
    return info.value.problems


def one(host: str, certificate: str, private_key: str) -> tuple[str, str]:
    found = problems(host, certificate, private_key)
    assert len(found) == 1, found
    return found[0]


# what passes, and what is kept ------------------------------------------------------------------


def test_a_good_pair_is_normalized_and_described(pki: Pki) -> None:
    issued = pki.leaf("app.example.com", "www.example.com", cn="app.example.com")
    noisy = "Bag Attributes\n    friendlyName: app\n" + issued.pem.replace("\n", "\r\n")
    sec1 = key_text(issued.key, serialization.PrivateFormat.TraditionalOpenSSL)
    checked = check_certificate("App.Example.COM.", noisy, sec1, at=NOW)
    assert checked.host == "app.example.com"
    assert checked.certificate == issued.pem  # re-encoded: CRLFs and text between blocks gone
    assert checked.private_key == issued.key_pem  # PKCS#8 whatever came in
    assert checked.subjects == ["app.example.com", "www.example.com"]
    assert checked.not_before == issued.cert.not_valid_before_utc
    assert checked.not_after == issued.cert.not_valid_after_utc
    assert checked.issuer == "CN=Test Intermediate"
    assert checked.serial == f"{issued.cert.serial_number:X}"
    assert checked.fingerprint_sha256 == issued.cert.fingerprint(hashes.SHA256()).hex()
    assert issued.key_pem not in repr(checked)


def test_a_leaf_alone_and_one_with_its_root_pass(pki: Pki) -> None:
    issued = pki.leaf("app.example.com")
    check_certificate("app.example.com", cert_text(issued.cert), issued.key_pem, at=NOW)
    full = cert_text(issued.cert, pki.inter, pki.root)
    check_certificate("app.example.com", full, issued.key_pem, at=NOW)


def test_an_rsa_key_passes_and_a_weak_one_does_not(pki: Pki) -> None:
    strong = pki.leaf("app.example.com", key=rsa.generate_private_key(65537, 2048))
    check_certificate("app.example.com", strong.pem, strong.key_pem, at=NOW)
    pkcs1 = key_text(strong.key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert "BEGIN RSA PRIVATE KEY" in pkcs1
    assert check_certificate("app.example.com", strong.pem, pkcs1, at=NOW).private_key == (
        strong.key_pem
    )
    weak = pki.leaf("app.example.com", key=rsa.generate_private_key(65537, 1024))
    field, reason = one("app.example.com", weak.pem, weak.key_pem)
    assert field == "private_key"
    assert "1024 bits is too weak" in reason


def test_ec_parameters_before_the_key_are_ignored(pki: Pki) -> None:
    issued = pki.leaf("app.example.com")
    params = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    sec1 = key_text(issued.key, serialization.PrivateFormat.TraditionalOpenSSL)
    check_certificate("app.example.com", issued.pem, params + sec1, at=NOW)


# coverage ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "host", "ok"),
    [
        (["app.example.com"], "app.example.com", True),
        (["app.example.com"], "www.example.com", False),
        (["*.example.com"], "app.example.com", True),
        (["*.example.com"], "a.b.example.com", False),
        (["*.example.com"], "example.com", False),
        (["*.example.com"], "*.example.com", True),
        (["app.example.com", "x.example.com"], "*.example.com", False),
        (["*.a.example.com"], "*.example.com", False),
    ],
)
def test_leaf_covers(names: list[str], host: str, ok: bool) -> None:
    assert leaf_covers(names, host) is ok


def test_a_wildcard_leaf_covers_one_label(pki: Pki) -> None:
    issued = pki.leaf("*.example.com")
    assert check_certificate("app.example.com", issued.pem, issued.key_pem, at=NOW)
    assert check_certificate("*.example.com", issued.pem, issued.key_pem, at=NOW)
    field, reason = one("a.b.example.com", issued.pem, issued.key_pem)
    assert field == "certificate"
    assert "is for *.example.com, which does not cover 'a.b.example.com'" in reason


def test_a_wildcard_host_needs_the_wildcard_san(pki: Pki) -> None:
    issued = pki.leaf("app.example.com")
    field, reason = one("*.example.com", issued.pem, issued.key_pem)
    assert field == "certificate"
    assert "does not cover '*.example.com'" in reason


def test_the_cn_counts_only_without_sans(pki: Pki) -> None:
    bare = pki.leaf(cn="app.example.com")
    check_certificate("app.example.com", bare.pem, bare.key_pem, at=NOW)
    with_sans = pki.leaf("other.example.com", cn="app.example.com")
    field, reason = one("app.example.com", with_sans.pem, with_sans.key_pem)
    assert (field, "is for other.example.com") == ("certificate", reason.split(",")[0])


def test_a_leaf_with_no_names_says_so(pki: Pki) -> None:
    issued = pki.leaf()
    assert one("app.example.com", issued.pem, issued.key_pem) == (
        "certificate",
        "is for no DNS name, which does not cover 'app.example.com'",
    )


# validity, usage, chains, keys ------------------------------------------------------------------


def test_expired_and_not_yet_valid(pki: Pki) -> None:
    old = pki.leaf("app.example.com", not_before=NOW - 90 * DAY, not_after=NOW - DAY)
    field, reason = one("app.example.com", old.pem, old.key_pem)
    assert field == "certificate"
    assert reason.startswith("expired at ")
    early = pki.leaf("app.example.com", not_before=NOW + DAY, not_after=NOW + 90 * DAY)
    field, reason = one("app.example.com", early.pem, early.key_pem)
    assert field == "certificate"
    assert reason.startswith("is not valid until ")


def test_a_client_only_certificate_is_refused(pki: Pki) -> None:
    client = pki.leaf("app.example.com", usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    assert one("app.example.com", client.pem, client.key_pem) == (
        "certificate",
        "its extended key usage does not allow TLS servers",
    )
    server = pki.leaf("app.example.com", usage=[ExtendedKeyUsageOID.SERVER_AUTH])
    check_certificate("app.example.com", server.pem, server.key_pem, at=NOW)


def test_a_mismatched_key_is_refused(pki: Pki) -> None:
    issued = pki.leaf("app.example.com")
    other = key_text(ec.generate_private_key(ec.SECP256R1()))
    field, reason = one("app.example.com", issued.pem, other)
    assert field == "private_key"
    assert "does not match the certificate" in reason


def test_a_chain_in_the_wrong_order_or_from_elsewhere_is_refused(pki: Pki) -> None:
    issued = pki.leaf("app.example.com")
    swapped = cert_text(issued.cert, pki.root, pki.inter)
    field, reason = one("app.example.com", swapped, issued.key_pem)
    assert field == "certificate"
    assert "certificate 2 of the chain did not issue certificate 1" in reason
    stranger = Pki()  # an intermediate with the same name but another key
    forged = cert_text(issued.cert, stranger.inter)
    field, reason = one("app.example.com", forged, issued.key_pem)
    assert field == "certificate"
    assert "certificate 1's signature does not verify" in reason


def test_garbage_and_wrong_blocks(pki: Pki) -> None:
    issued = pki.leaf("app.example.com")
    cases = {
        ("not a pem", issued.key_pem): ("certificate", "is not PEM"),
        (issued.pem, "not a pem"): ("private_key", "is not PEM"),
        (issued.pem + issued.key_pem, issued.key_pem): ("certificate", "holds a PRIVATE KEY"),
        (issued.pem, issued.pem): ("private_key", "holds a CERTIFICATE block"),
        (issued.pem, issued.key_pem * 2): ("private_key", "holds 2 private keys"),
    }
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    cases[(broken, issued.key_pem)] = ("certificate", "certificate 1 of the chain does not parse")
    bad_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    cases[(issued.pem, bad_key)] = ("private_key", "the private key does not parse")
    for (certificate, private_key), (field, start) in cases.items():
        got = one("app.example.com", certificate, private_key)
        assert got[0] == field, got
        assert got[1].startswith(start), got
        assert "AAAA" not in got[1]


def test_problems_of_every_field_come_together(pki: Pki) -> None:
    found = problems("Not A Host", "junk", "junk")
    assert [field for field, _ in found] == ["host", "certificate", "private_key"]


@pytest.mark.parametrize("fmt", ["pkcs8", "traditional"])
def test_a_passphrase_protected_key_is_refused(pki: Pki, fmt: str) -> None:
    issued = pki.leaf("app.example.com")
    encrypted = issued.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8
        if fmt == "pkcs8"
        else serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode()
    assert one("app.example.com", issued.pem, encrypted) == (
        "private_key",
        "the key must not be passphrase-protected",
    )


def test_chain_length_is_bounded(pki: Pki) -> None:
    issued = pki.leaf("app.example.com")
    with pytest.raises(ValueError, match="at most 10"):
        parse_chain(cert_text(issued.cert, *([pki.inter] * 10)))
    assert len(parse_chain(issued.pem)) == 2


def test_unsupported_curves_are_refused() -> None:
    with pytest.raises(ValueError, match="secp256k1"):
        parse_key(key_text(ec.generate_private_key(ec.SECP256K1())))


# the routers' CA --------------------------------------------------------------------------------


def test_make_ca_is_a_self_signed_root() -> None:
    ca = make_ca(NOW)
    cert = x509.load_pem_x509_certificate(ca.certificate_pem.encode())
    assert cert.subject.rfc4514_string() == f"CN={CA_COMMON_NAME}"
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 1
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert cert.not_valid_before_utc == NOW - timedelta(hours=1)
    assert cert.not_valid_after_utc == NOW.replace(year=NOW.year + 10)
    key = serialization.load_pem_private_key(ca.private_key_pem.encode(), None)
    assert key.public_key() == cert.public_key()


def test_router_ca_repr_hides_the_key() -> None:
    ca = make_ca()
    assert "PRIVATE" not in repr(ca)
    assert ca.private_key_pem.split("\n")[1] not in repr(ca)
    assert RouterCA("a", "b") == RouterCA("a", "b")
