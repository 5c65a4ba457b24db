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


def _import_structlog_without_rich() -> Any:
    """Import structlog while hiding ``rich``.

    structlog imports rich (typer requires it) only to offer pretty tracebacks, and colorama
    only for colours on Windows: about 55 ms on every gate call for nothing we use.
    ``sys.modules[name] = None`` makes ``import rich`` raise ImportError, which structlog
    handles; the entry is put back at once, so typer can still import rich later for --help.
    """
    saved = {name: sys.modules.get(name) for name in ("rich", "colorama")}
    if "structlog" not in sys.modules:
        for name, value in saved.items():
            if value is None:
                sys.modules[name] = None  # type: ignore[assignment]
    try:
        import structlog as module
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
    return module


structlog = _import_structlog_without_rich()

_configured = False


class _Stderr:
    """``sys.stderr`` as it is at each write, not as it was when logging was configured.

    A caller that swaps ``sys.stderr`` for a while (a test runner invoking the CLI in-process)
    must not leave the logger writing to a stream it has since closed.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(
    stream: TextIO | None = None, *, json: bool | None = None, level: int = logging.INFO
) -> None:
    """Configure structlog once. ``json`` None means: JSON unless ``stream`` is a terminal."""
    global _configured
    out: Any = stream if stream is not None else _Stderr()
    use_json = (not (stream or sys.stderr).isatty()) if json is None else json
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
