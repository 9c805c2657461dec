"""The schema's ``pattern`` and the checker are one regular expression read by two engines:
Python's ``re`` (the checker, and the fuzzer's validator) and ECMA 262 (what a JSON Schema
pattern means to every other client). Where they disagree, a value the schema admits is refused
with a 422 (schemathesis found one: an email with ``\\x1f``, which only Python calls a space)."""

from __future__ import annotations

import re

import pytest

from lastbackend.model.apps import check_git_url
from lastbackend.model.common import BLANK
from lastbackend.model.registries import check_email

# ECMA 262's WhiteSpace and LineTerminator, which its \s matches (and nothing else).
_LINE_AND_SPACE = (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F)
ECMA_SPACE = frozenset([*_LINE_AND_SPACE, *range(0x2000, 0x200B), 0x205F, 0x3000, 0xFEFF])
CONTROLS = frozenset([*range(0x00, 0x20), *range(0x7F, 0xA0)])


def test_blank_is_the_same_set_in_python_and_in_ecma_262() -> None:
    blank = re.compile(f"[{BLANK}]")
    differ = [
        hex(cp)
        for cp in range(0x10000)
        if (blank.fullmatch(chr(cp)) is not None) != (cp in ECMA_SPACE | CONTROLS)
        and not 0xD800 <= cp < 0xE000
    ]
    assert differ == []


@pytest.mark.parametrize("char", ["\x1c", "\x1f", "\x85", "\ufeff", "\u3000", "\t"])
def test_no_blank_passes_where_the_schema_would_refuse_it_or_the_reverse(char: str) -> None:
    with pytest.raises(ValueError, match="not an email address"):
        check_email(f"a{char}b@example.com")
    with pytest.raises(ValueError, match="is not a git URL"):
        check_git_url(f"https://example.com/a{char}b.git")


def test_ordinary_addresses_still_pass() -> None:
    assert check_email("dev@example.com") == "dev@example.com"
    assert check_email("") == ""
    url = "git@github.com:acme/web.git"
    assert check_git_url(url) == url
