"""The error hierarchy and the one table that maps errors to exit codes.

Exit codes follow sysexits(3), so that systemd units and shell scripts can tell a
configuration problem (fix the file) from a temporary refusal (wait) from an I/O fault
(look at the disk). The CLI is the only place that turns these into process exits.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
#: Something the operator must look at but that is not a refusal (doctor found problems).
EXIT_PROBLEMS: Final = 1
EXIT_USAGE: Final = 2
#: EX_SOFTWARE: a bug in agent-supervisor. Printed as one line, never as a traceback.
EXIT_INTERNAL: Final = 70
#: EX_IOERR: the state cannot be read, locked or written.
EXIT_STATE_IO: Final = 74
#: EX_TEMPFAIL: the gate says "not now" (``--no-wait``) or a wait was interrupted.
EXIT_NOT_NOW: Final = 75
#: EX_NOPERM: an operator action by someone who may not.
EXIT_NOT_PERMITTED: Final = 77
#: EX_CONFIG: bad configuration or a bad identity (certificate).
EXIT_CONFIG: Final = 78
#: The shell's "command not found": ``gate -- COMMAND`` could not exec the command.
EXIT_EXEC: Final = 127


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception as one line of text (whitespace folded), for error lines and log fields."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if limit is None else text[:limit]


class SupervisorError(Exception):
    """Base of every error agent-supervisor reports to a user as one line."""

    exit_code: int = EXIT_INTERNAL


class UsageError(SupervisorError):
    """The command line is wrong (bad agent name, conflicting flags)."""

    exit_code = EXIT_USAGE


class ConfigError(SupervisorError):
    """The configuration is wrong; the message names the file, the key and the value."""

    exit_code = EXIT_CONFIG


class IdentityError(ConfigError):
    """The agent's identity (client certificate, key, CA) is not usable."""


class StateError(SupervisorError, OSError):
    """The state cannot be read, locked or written; the message names the path and why."""

    exit_code = EXIT_STATE_IO


class DiskFull(StateError):
    """A write failed for want of space (ENOSPC): what can wait goes to the journal."""


class NotPermitted(SupervisorError, PermissionError):
    """An operator action (override, hold, release, reset, --force) by someone who may not."""

    exit_code = EXIT_NOT_PERMITTED


class ExecError(SupervisorError):
    """``gate -- COMMAND``: the command could not be executed (its run is recorded as 127)."""

    exit_code = EXIT_EXEC
