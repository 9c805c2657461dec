"""Users' TLS certificates per host, and the routers' internal CA: the pure part, no I/O.

``certificates/<host>`` holds ``{"host", "certificate", "private_key", "subjects", "not_before",
"not_after", "issuer", "serial", "fingerprint_sha256", "created", "updated"}``: the chain as PEM
(leaf first), the key as a Fernet token (see ``lastbackend.secrets``), and what the leaf says, so
a dashboard or ``etcdctl`` shows who issued it and when it expires without parsing PEM.

A body is checked here, all of it, before anything is written, because a router given a bad pair
would either refuse its whole config or serve a handshake every client rejects. What is refused
(each a 422 naming the field):

- a PEM that does not parse, in either field; a key that is passphrase-protected (a router has
  nobody to type the passphrase); a ``certificate`` holding anything but CERTIFICATE blocks, so a
  key pasted there by mistake is never stored in clear;
- a key that is not the leaf's (the first certificate's public key);
- a leaf that does not cover the host: its DNS SANs, or its CN only when it has no SAN extension
  (as browsers did before they dropped the CN); a ``*.`` SAN covers one label; a wildcard host
  needs that very wildcard among the SANs, since one name would not cover all it routes;
- a leaf that has expired or is not valid yet; one whose extended key usage excludes TLS servers;
- a chain where a certificate was not signed by the next one (issuer name and signature).

Intermediates are not checked for expiry: chains with an expired cross-sign for old clients are
served on purpose (Let's Encrypt's DST Root CA X3 chain was one).

The key is kept as PKCS#8 PEM whatever form it came in (PKCS#1, SEC 1), so two spellings of one
key compare equal and every router reads one format.
"""

from __future__ import annotations

import itertools
import re
import secrets
from datetime import UTC, datetime, timedelta

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lastbackend.model.hosts import WILDCARD, check_route_host, covers

MAX_CHAIN = 10
"""Certificates one chain may hold: real chains have two to four."""
MIN_RSA_BITS = 2048
"""Browsers refuse weaker RSA keys in server certificates."""
CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
"""The ECDSA curves TLS clients (and Caddy, in Go) accept."""

CA_COMMON_NAME = "lastbackend Local CA Root"
CA_YEARS = 10
CA_BACKDATE = timedelta(hours=1)
"""A new root is valid from an hour ago, so a client whose clock is a little behind accepts it."""

_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----\r?\n?", re.DOTALL | re.ASCII
)
_KEY_LABELS = frozenset({"PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"})
_IGNORED_KEY_LABELS = frozenset({"EC PARAMETERS"})  # what `openssl ecparam -genkey` puts first
_LEGACY_ENCRYPTED = re.compile(r"^Proc-Type:[ \t]*4,ENCRYPTED", re.MULTILINE)
"""The header of a traditional OpenSSL key encrypted with a passphrase (``openssl rsa -aes256``)."""


class CertificateProblems(ValueError):
    """What is wrong with a body: ``(field, reason)`` pairs, never a piece of the key."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in problems))
        self.problems = problems


@attrs.frozen
class CertificateBody:
    """The body of ``PUT /api/certificates/{host}``: a PEM chain (leaf first) and its key."""

    certificate: str
    private_key: str = attrs.field(repr=False)


@attrs.frozen
class Checked:
    """A body that passed every check, normalized; ``private_key`` is clear PKCS#8 PEM."""

    host: str
    certificate: str
    private_key: str = attrs.field(repr=False)
    subjects: list[str]
    not_before: datetime
    not_after: datetime
    issuer: str
    serial: str
    fingerprint_sha256: str


@attrs.frozen
class Certificate:
    """``certificates/<host>`` as stored; ``private_key`` is a Fernet token."""

    host: str
    certificate: str
    private_key: str = attrs.field(repr=False)
    subjects: list[str]
    not_before: datetime
    not_after: datetime
    issuer: str
    serial: str
    fingerprint_sha256: str
    created: datetime
    updated: datetime


@attrs.frozen
class StoredCA:
    """``router/ca`` as stored: the root certificate, its key as a Fernet token."""

    certificate: str
    private_key: str = attrs.field(repr=False)
    fingerprint_sha256: str
    not_after: datetime
    created: datetime


@attrs.frozen(repr=False)
class RouterCA:
    """The routers' shared root CA, decrypted: what a router gives Caddy's ``pki`` app."""

    certificate_pem: str
    private_key_pem: str

    def __repr__(self) -> str:
        return f"RouterCA(certificate_pem={self.certificate_pem[:40]!r}..., private_key_pem='***')"


# parsing ----------------------------------------------------------------------------------------


def _blocks(text: str) -> list[tuple[str, str]]:
    """(label, whole block) of every PEM block; text between blocks is ignored, as openssl's
    ``Bag Attributes`` and ``subject=`` lines are."""
    return [(m.group(1), m.group(0)) for m in _BLOCK.finditer(text)]


def parse_chain(text: str) -> list[x509.Certificate]:
    """The certificates of a PEM chain, in order; ``ValueError`` saying why there are none."""
    blocks = _blocks(text)
    if not blocks:
        raise ValueError("is not PEM: no '-----BEGIN CERTIFICATE-----' block found")
    others = sorted({label for label, _ in blocks if label != "CERTIFICATE"})
    if others:
        hint = " (the key goes in private_key)" if any("KEY" in o for o in others) else ""
        raise ValueError(f"holds a {', '.join(others)} block; only CERTIFICATE blocks{hint}")
    if len(blocks) > MAX_CHAIN:
        raise ValueError(f"holds {len(blocks)} certificates; a chain has at most {MAX_CHAIN}")
    chain = []
    for number, (_, block) in enumerate(blocks, 1):
        try:
            chain.append(x509.load_pem_x509_certificate(block.encode("ascii")))
        except ValueError:
            raise ValueError(f"certificate {number} of the chain does not parse") from None
    return chain


Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def parse_key(text: str) -> Key:
    """The one private key in ``text``; ``ValueError`` saying why not (never quoting it)."""
    blocks = _blocks(text)
    if not blocks:
        raise ValueError("is not PEM: no '-----BEGIN PRIVATE KEY-----' block found")
    labels = [label for label, _ in blocks if label not in _IGNORED_KEY_LABELS]
    if "ENCRYPTED PRIVATE KEY" in labels or any(_LEGACY_ENCRYPTED.search(b) for _, b in blocks):
        raise ValueError("the key must not be passphrase-protected")
    keys = [block for label, block in blocks if label in _KEY_LABELS]
    others = sorted({label for label in labels if label not in _KEY_LABELS})
    if others:
        raise ValueError(f"holds a {', '.join(others)} block; send only the private key")
    if len(keys) != 1:
        raise ValueError(f"holds {len(keys)} private keys; send exactly one")
    try:
        key = serialization.load_pem_private_key(keys[0].encode("ascii"), password=None)
    except TypeError:
        raise ValueError("the key must not be passphrase-protected") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("the private key does not parse") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"an RSA key of {key.key_size} bits is too weak; use at least {MIN_RSA_BITS}"
            )
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, CURVES):
            raise ValueError(
                f"the curve {key.curve.name} is not one TLS clients accept; use P-256 or P-384"
            )
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ValueError("is not an RSA, ECDSA or Ed25519 key")


def key_pem(key: Key) -> str:
    """PKCS#8 PEM, unencrypted: the one form a key is stored and handed to routers in."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def chain_pem(chain: list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in chain)


# the checks -------------------------------------------------------------------------------------


def subjects(leaf: x509.Certificate) -> list[str]:
    """The names a leaf is for: its DNS SANs, or its CN when it has no SAN extension."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    else:
        names = san.value.get_values_for_type(x509.DNSName)
    return [n.lower().removesuffix(".") for n in names]


def leaf_covers(names: list[str], host: str) -> bool:
    """Whether a leaf for ``names`` serves ``host``; a wildcard host needs the same wildcard."""
    if host.startswith(WILDCARD):
        return host in names
    return any(covers(name, host) for name in names)


def _for_servers(leaf: x509.Certificate) -> bool:
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return (
        ExtendedKeyUsageOID.SERVER_AUTH in eku or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku
    )


def _public(key: CertificatePublicKeyTypes) -> bytes:
    """SubjectPublicKeyInfo DER: equal exactly when two public keys are one."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def chain_problem(chain: list[x509.Certificate]) -> str | None:
    """Why a chain is broken (a certificate not signed by the next one), or ``None``."""
    for number, (child, parent) in enumerate(itertools.pairwise(chain), 1):
        try:
            child.verify_directly_issued_by(parent)
        except ValueError:
            return (
                f"certificate {number + 1} of the chain did not issue certificate {number}: "
                f"{child.issuer.rfc4514_string()!r} issued it, not "
                f"{parent.subject.rfc4514_string()!r}"
            )
        except InvalidSignature:
            return (
                f"certificate {number}'s signature does not verify with the key of "
                f"certificate {number + 1}, which names its issuer"
            )
        except (TypeError, UnsupportedAlgorithm):
            return (
                f"certificate {number + 1} has a key type that cannot verify certificate {number}"
            )
    return None


def _stamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_certificate(host: str, certificate: str, private_key: str, *, at: datetime) -> Checked:
    """``host`` (as in the path) and a body, checked as the module docstring says and normalized.

    Raises :class:`CertificateProblems` with every problem it could find: each field's own
    problems first; the checks between them only when both fields parsed.
    """
    problems: list[tuple[str, str]] = []
    try:
        host = check_route_host(host)
    except ValueError as exc:
        problems.append(("host", str(exc)))
    chain: list[x509.Certificate] = []
    try:
        chain = parse_chain(certificate)
    except ValueError as exc:
        problems.append(("certificate", str(exc)))
    key: Key | None = None
    try:
        key = parse_key(private_key)
    except ValueError as exc:
        problems.append(("private_key", str(exc)))
    if problems or key is None:
        raise CertificateProblems(problems)
    leaf = chain[0]
    names = subjects(leaf)
    if _public(key.public_key()) != _public(leaf.public_key()):
        problems.append(
            ("private_key", "does not match the certificate (the leaf, first in the chain)")
        )
    if not leaf_covers(names, host):
        shown = ", ".join(names) or "no DNS name"
        problems.append(("certificate", f"is for {shown}, which does not cover {host!r}"))
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if at < not_before:
        problems.append(("certificate", f"is not valid until {_stamp(not_before)}"))
    if at > not_after:
        problems.append(("certificate", f"expired at {_stamp(not_after)}"))
    if not _for_servers(leaf):
        problems.append(("certificate", "its extended key usage does not allow TLS servers"))
    broken = chain_problem(chain)
    if broken:
        problems.append(("certificate", broken))
    if problems:
        raise CertificateProblems(problems)
    return Checked(
        host=host,
        certificate=chain_pem(chain),
        private_key=key_pem(key),
        subjects=names,
        not_before=not_before,
        not_after=not_after,
        issuer=leaf.issuer.rfc4514_string(),
        serial=f"{leaf.serial_number:X}",
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
    )


# the routers' CA --------------------------------------------------------------------------------


def make_ca(at: datetime | None = None) -> RouterCA:
    """A new self-signed ECDSA P-256 root, as Caddy makes its own local one.

    ``path_length=1`` leaves room for the intermediate Caddy signs its leaves with.
    """
    at = at or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(at - CA_BACKDATE)
        .not_valid_after(_years_after(at, CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return RouterCA(chain_pem([cert]), key_pem(key))


def _years_after(at: datetime, years: int) -> datetime:
    try:
        return at.replace(year=at.year + years)
    except ValueError:  # 29 February, in a year that has none
        return at.replace(year=at.year + years, day=28)


def ca_summary(certificate_pem: str) -> tuple[str, datetime]:
    """(SHA-256 fingerprint, not_after) of a root, for what ``router/ca`` shows beside it."""
    cert = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
    return cert.fingerprint(hashes.SHA256()).hex(), cert.not_valid_after_utc
