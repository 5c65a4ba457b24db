"""Structured logging, configured once at the entry point.

Events are stable dotted ids with key-values (``gate.allowed``, ``gate.refused``,
``state.quarantined``) so that log pipelines can count them. Logs go to stderr: stdout belongs
to the command's answer (the decision JSON, the status table). JSON lines when stderr is not a
terminal (journald, docker logs), readable key=value lines when it is.

Never log key material, whole certificates or the environment: log paths, subjects and dates.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_configured = False


def configure(
    stream: TextIO | None = None, *, json: bool | None = None, level: int = logging.INFO
) -> None:
    """Configure structlog once. ``json`` None means: JSON unless ``stream`` is a terminal."""
    global _configured
    out = stream if stream is not None else sys.stderr
    use_json = (not out.isatty()) if json is None else json
    renderer: Any
    if use_json:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(**initial: Any) -> Any:
    """A bound logger; configures a default (stderr) if the entry point did not."""
    if not _configured:
        configure()
    return structlog.get_logger(**initial)
