"""A request aiohttp cannot parse is logged as the client's error: one line, no traceback."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from aiohttp.http_exceptions import BadHttpMessage

from lastbackend import logsetup


@pytest.fixture(autouse=True)
def restored() -> Iterator[None]:
    """setup() binds structlog to this test's captured stderr, which is closed after it: every
    later test would then log into a closed file. Put the configuration back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_a_malformed_request_is_one_info_line_not_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logsetup.setup("info", "json")
    try:
        raise BadHttpMessage("Invalid header value char:\n\n  b'Authorization: Bearer s3cret\\x00'")
    except BadHttpMessage as exc:
        logging.getLogger("aiohttp.server").error("Error handling request", exc_info=exc)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "ERROR" not in err
    (line,) = [json.loads(raw) for raw in err.splitlines() if raw.startswith("{")]
    assert line["level"] == "info"
    assert line["status"] == 400
    assert line["reason"] == "Invalid header value char"
    assert "s3cret" not in err, "the offending header line is never logged"


def test_a_real_server_error_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    logsetup.setup("info", "json")
    try:
        raise RuntimeError("a bug of ours")
    except RuntimeError as exc:
        logging.getLogger("aiohttp.server").error("Error handling request", exc_info=exc)
    (record,) = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert "a bug of ours" in caplog.text
