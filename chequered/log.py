"""structlog set-up: key-value on a terminal, JSON lines otherwise."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

MAX_VALUE_CHARS = 512
"""Longest string value a log line repeats; the rest is cut and its length given.

Log lines carry input from outside (a command's id, a websocket frame's op, a
file name): a hostile sender must not fill the log, nor write to the terminal."""

# C0 and C1 control characters, DEL included: on a terminal they move the
# cursor, recolour or retitle the window. Newlines and tabs are escaped too, so
# that one event is always one line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape(match: re.Match[str]) -> str:
    return repr(match.group(0))[1:-1]


def sanitise(value: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``value`` safe to print: control characters escaped, cut at ``limit`` characters."""
    if len(value) > limit:
        value = f"{value[:limit]}... ({len(value)} characters)"
    return _CONTROL.sub(_escape, value)


def _sanitise_values(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = sanitise(value)
        elif isinstance(value, bytes):
            event_dict[key] = sanitise(repr(value))
    return event_dict


class _Stderr:
    """``sys.stderr`` as it is when a line is written, not when logging was configured:
    a test runner or a daemon may swap (and close) the stream in between."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog once for the process; logs go to stderr."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _sanitise_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
