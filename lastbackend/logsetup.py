"""structlog set-up: JSON lines on stderr, with whatever the context binds (request id, ...)."""

from __future__ import annotations

import logging
import sys

import structlog
from aiohttp.http_exceptions import HttpProcessingError


def setup(level: str = "info", fmt: str = "json") -> None:
    numeric = logging.getLevelNamesMapping()[level.upper()]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ClientErrors) for f in server.filters):
        server.addFilter(_ClientErrors())


class _ClientErrors(logging.Filter):
    """A request aiohttp could not parse (a NUL byte in a header, a bad request line) is answered
    400 by aiohttp, yet logged at ERROR with a traceback, as if the server had failed: anyone who
    can connect could fill the log with them. It is the client's error, so it becomes one info
    line with the kind of error, like the access log's, and the traceback is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        # The message goes on with the offending bytes (a header line: it may be an
        # Authorization header), which are never logged: only what kind of error it is.
        reason = str(exc.message).split("\n", 1)[0].split(":", 1)[0].strip()
        _http_log().info("request refused: it is not valid HTTP", status=exc.code, reason=reason)
        return False


log = structlog.get_logger("lastbackend")


def _http_log() -> structlog.typing.FilteringBoundLogger:
    """A logger bound at each use, not cached like :data:`log`: it is first used from inside
    aiohttp's own logging call, whose stream a test may swap out."""
    return structlog.get_logger("lastbackend.http")  # type: ignore[no-any-return]
