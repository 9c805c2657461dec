"""Buildpack and platform API versions, and what a descriptor's lists of them mean (document 002).

An API version is ``major.minor``. Since 1.0, minors are backwards compatible (RFC 0041), so a
lifecycle that lists ``1.3`` supports every ``1.0`` to ``1.3``; a bare major ``1`` names the whole
``1.x`` line, which is how a deprecation retires an API without listing each minor. Before 1.0
every minor may break, so ``0.4`` means ``0.4`` and nothing else.

Two kinds of value, so neither can be mistaken for the other:
:class:`Version` is one concrete API (what a platform asks for, what a ``buildpack.toml`` says);
:class:`Entry` is one item of a descriptor list (a range, by the rules above).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import attrs

_NUMBER = r"(0|[1-9][0-9]*)"
_SYNTAX = re.compile(rf"{_NUMBER}(?:\.{_NUMBER})?")


class ApiVersionError(ValueError):
    """A version string or a list of them that breaks the rules; the message says which and why."""


@attrs.frozen(order=True)
class Version:
    """One concrete API version; ordered by (major, minor)."""

    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


@attrs.frozen
class Entry:
    """An item of a ``supported`` or ``deprecated`` list: ``0.n``, ``x.n`` or a bare major ``x``."""

    major: int
    minor: int | None  # None: a bare major, every ``major.x``

    def __str__(self) -> str:
        return str(self.major) if self.minor is None else f"{self.major}.{self.minor}"

    def covers(self, version: Version) -> bool:
        """Whether this entry names ``version``: the rules of the module docstring."""
        if version.major != self.major:
            return False
        if self.minor is None:
            return True
        if self.major == 0:
            return version.minor == self.minor
        return version.minor <= self.minor

    def versions(self) -> list[Version]:
        """The concrete versions a bounded entry names (a bare major has no upper bound)."""
        if self.minor is None:
            raise ApiVersionError(f"{self}: a bare major names an unbounded range")
        if self.major == 0:
            return [Version(0, self.minor)]
        return [Version(self.major, minor) for minor in range(self.minor + 1)]


def _split(text: object) -> tuple[int, int | None]:
    if not isinstance(text, str):
        raise ApiVersionError(
            f'{text!r}: an API version is a string like "0.5" or "1.2" (quote it in TOML)'
        )
    match = _SYNTAX.fullmatch(text.strip())
    if match is None:
        raise ApiVersionError(
            f'{text!r}: not an API version; expected <major>.<minor> like "0.5" or "1.2"'
        )
    major, minor = match.groups()
    return int(major), None if minor is None else int(minor)


def parse_entry(text: object) -> Entry:
    """A descriptor list item; a bare ``0`` is refused, since each 0.x is its own API."""
    major, minor = _split(text)
    if major == 0 and minor is None:
        raise ApiVersionError(f"{text!r}: 0.x APIs are each their own API; name them one by one")
    return Entry(major, minor)


def parse_version(text: object) -> Version:
    """A concrete API; a bare major means its ``.0``, as upstream lifecycle parses ``1``."""
    major, minor = _split(text)
    return Version(major, 0 if minor is None else minor)


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as API ``a`` is older than, the same as or newer than ``b``."""
    va, vb = parse_version(a), parse_version(b)
    return (va > vb) - (va < vb)


@attrs.frozen
class Apis:
    """One kind's lists (buildpack or platform), validated: build it with :meth:`parse`."""

    supported: tuple[Entry, ...]
    deprecated: tuple[Entry, ...] = ()

    @classmethod
    def parse(cls, supported: Sequence[object], deprecated: Sequence[object] = ()) -> Apis:
        """Check the document's rules; the error names the offending value.

        ``supported`` entries must be bounded (``x.n``): a lifecycle cannot support minors that
        do not exist yet. ``deprecated`` entries are ``0.x`` or a bare major, and each must be
        supported (supported is a superset of deprecated).
        """
        sup = _entries("supported", supported)
        if not sup:
            raise ApiVersionError("supported: must name at least one API version")
        for entry in sup:
            if entry.minor is None:
                raise ApiVersionError(
                    f"supported: {str(entry)!r}: a bare major has no upper bound; name the "
                    f'newest supported minor, like "{entry.major}.2"'
                )
        dep = _entries("deprecated", deprecated)
        apis = cls(sup, dep)
        for entry in dep:
            if entry.major != 0 and entry.minor is not None:
                raise ApiVersionError(
                    f"deprecated: {str(entry)!r}: only 0.x versions or a bare major (like "
                    f'"{entry.major}") may be deprecated, since {entry.major}.x minors are '
                    "compatible with one another"
                )
            if not apis.is_supported(Version(entry.major, entry.minor or 0)):
                raise ApiVersionError(
                    f"deprecated: {str(entry)!r} is not supported; supported must contain "
                    "every deprecated API"
                )
        return apis

    def is_supported(self, version: Version | str) -> bool:
        v = parse_version(version) if isinstance(version, str) else version
        return any(entry.covers(v) for entry in self.supported)

    def is_deprecated(self, version: Version | str) -> bool:
        """Deprecated implies supported: a version past every supported one is not deprecated."""
        v = parse_version(version) if isinstance(version, str) else version
        return self.is_supported(v) and any(entry.covers(v) for entry in self.deprecated)

    def expanded_supported(self) -> list[Version]:
        """Every supported version, oldest first."""
        return _unique(v for entry in self.supported for v in entry.versions())

    def expanded_deprecated(self) -> list[Version]:
        """Every deprecated version (all of them supported), oldest first."""
        return [v for v in self.expanded_supported() if self.is_deprecated(v)]

    def earliest(self) -> Version:
        """The oldest entry of ``supported`` as listed: the old single-version label's value."""
        return min(Version(e.major, e.minor or 0) for e in self.supported)

    def latest(self) -> Version:
        """The newest supported version: the platform API to use when none is configured."""
        return self.expanded_supported()[-1]


def _entries(key: str, values: Sequence[object]) -> tuple[Entry, ...]:
    out = []
    for value in values:
        try:
            out.append(parse_entry(value))
        except ApiVersionError as exc:
            raise ApiVersionError(f"{key}: {exc}") from None
    return tuple(out)


def _unique(versions: Iterable[Version]) -> list[Version]:
    return sorted(set(versions))
