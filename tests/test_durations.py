"""Durations: exact values at the edges, the exact refusal messages, and the human rendering."""

from __future__ import annotations

import pytest

from supervisor.core.durations import (
    MAX_SECONDS,
    DurationError,
    format_duration,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (" 20m ", 1200.0),
        ("1h 30m", 5400.0),
        ("1H30M", 5400.0),
        ("2d3h4m5s6ms", 2 * 86400 + 3 * 3600 + 4 * 60 + 5 + 0.006),
        ("0", 0.0),
        (0, 0.0),
        ("0s", 0.0),
        ("3650d", MAX_SECONDS),
        (MAX_SECONDS, MAX_SECONDS),
    ],
)
def test_durations_at_the_edges_parse_exactly(text: object, seconds: float) -> None:
    """Spaces and case are ignored, zero is a duration, and exactly ten years is allowed."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "True is not a duration (use e.g. 30s, 20m, 3h)"),
        ([1], "[1] is not a duration (use e.g. 30s, 20m, 3h)"),
        (None, "None is not a duration (use e.g. 30s, 20m, 3h)"),
        ("10x", "'10x' is not a duration (use e.g. 500ms, 30s, 20m, 3h, 1d)"),
        ("", "'' is not a duration (use e.g. 500ms, 30s, 20m, 3h, 1d)"),
        ("-5s", "'-5s' is not a duration (use e.g. 500ms, 30s, 20m, 3h, 1d)"),
        ("nan", "'nan' is not a finite duration"),
        (float("inf"), "inf is not a finite duration"),
        (-1, "-1 is negative"),
        ("-0.5", "'-0.5' is negative"),
        ("3651d", "'3651d' is longer than ten years"),
        (MAX_SECONDS + 1, "315360001.0 is longer than ten years"),
    ],
)
def test_refused_durations_say_what_was_wrong(value: object, message: str) -> None:
    """Every refusal is a DurationError whose one line names the value and what is expected."""
    with pytest.raises(DurationError) as excinfo:
        parse_duration(value)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0ms"),
        (0.0004, "0ms"),
        (0.5, "500ms"),
        (0.75, "750ms"),
        (0.999, "999ms"),
        (1.0, "1s"),
        (1.5, "2s"),
        (5.0, "5s"),
        (42.0, "42s"),
        (59.6, "1m"),
        (65.0, "1m05s"),
        (300.0, "5m"),
        (1200.0, "20m"),
        (3600.0, "1h"),
        (3605.0, "1h05s"),
        (3900.0, "1h05m"),
        (3665.0, "1h01m05s"),
        (86400.0, "1d"),
        (90061.0, "1d1h01m01s"),
    ],
)
def test_format_duration_renders_exactly(seconds: float, text: str) -> None:
    """Below a second in milliseconds; above, whole units with two-digit minutes and seconds
    after a larger unit and no padding on the first."""
    assert format_duration(seconds) == text
