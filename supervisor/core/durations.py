"""Durations as operators write them: ``500ms``, ``30s``, ``20m``, ``3h``, ``1d``, ``1h30m``.

A bare number (TOML integer or float, or a numeric string) is seconds. Negative, NaN,
infinite and absurdly large values are refused: a typo must not turn a 20-minute window
into a century, nor into a zero that lets every agent through.
"""

from __future__ import annotations

import math
import re
from typing import Final

#: Upper bound for any duration: ten years. Larger values are typos, not policy.
MAX_SECONDS: Final = 10 * 365 * 86400.0

_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE: Final = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")


class DurationError(ValueError):
    """The text is not a duration; the message says what was expected."""


def parse_duration(value: object) -> float:
    """Return ``value`` in seconds, or raise :class:`DurationError` naming the value."""
    if isinstance(value, bool):
        raise DurationError(f"{value!r} is not a duration (use e.g. 30s, 20m, 3h)")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            if not text or not _WHOLE.fullmatch(text):
                raise DurationError(
                    f"{value!r} is not a duration (use e.g. 500ms, 30s, 20m, 3h, 1d)"
                ) from None
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    else:
        raise DurationError(f"{value!r} is not a duration (use e.g. 30s, 20m, 3h)")
    if math.isnan(seconds) or math.isinf(seconds):
        raise DurationError(f"{value!r} is not a finite duration")
    if seconds < 0:
        raise DurationError(f"{value!r} is negative")
    if seconds > MAX_SECONDS:
        raise DurationError(f"{value!r} is longer than ten years")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds for humans: ``1h05m``, ``20m``, ``42s``, ``500ms``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if days:
        parts.append(f"{days}d")
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes:02d}m" if parts else f"{minutes}m")
    if secs:
        parts.append(f"{secs:02d}s" if parts else f"{secs}s")
    return "".join(parts)  # total >= 1 here, so at least one part
