"""The tests can fail both ways: a hand-made gate that refuses for ever, or one that allows at
once, or one that starts a second late, fails the invariant tests (issue 16: properties that
only checked "never too early" passed a gate that refused for ever).

Each case swaps one of these broken ``decide`` functions into the module the invariant tests
use, runs a pair of those tests' bodies, and expects an AssertionError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import test_invariants as inv

from supervisor.core import policy
from supervisor.core.policy import Decision


def refuse_for_ever(*args: Any, **kwargs: Any) -> Decision:
    """Refuses every start, naming a time a day later."""
    d = policy.decide(*args, **kwargs)
    at = d.decided_at or 0.0
    return replace(d, allowed=False, start=False, next_allowed_at=at + 86400.0, events=())


def allow_at_once(*args: Any, **kwargs: Any) -> Decision:
    """Allows every start the moment it is asked."""
    d = policy.decide(*args, **kwargs)
    if d.allowed:
        return d
    from supervisor.core.events import Approved

    at = d.decided_at or 0.0
    return replace(d, allowed=True, start=True, next_allowed_at=None, events=(Approved(at, "now"),))


def a_second_late(*args: Any, **kwargs: Any) -> Decision:
    """Names every slot one second after the contract's."""
    d = policy.decide(*args, **kwargs)
    if d.allowed or d.next_allowed_at is None:
        return d
    return replace(d, next_allowed_at=d.next_allowed_at + 1.0)


@pytest.fixture(params=[refuse_for_ever, allow_at_once, a_second_late], ids=lambda f: f.__name__)
def broken(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The invariant tests' ``decide`` replaced by a broken one."""
    monkeypatch.setattr(inv, "decide", request.param)
    yield


CASES: list[Callable[[], None]] = [
    lambda: inv.test_a_fleet_event_on_a_live_control_plane_starts_nobody_at_once(
        "stable agents crash together", inv.stable(inv.T0, 1)
    ),
    inv.test_forty_nodes_at_level_three_asked_after_w_are_all_refused,
    inv.test_the_first_ask_is_a_fact_and_lapses_when_nobody_comes_for_it,
]


@pytest.mark.usefixtures("broken")
@pytest.mark.parametrize("case", CASES, ids=["fleet-event", "crash-loop", "first-ask"])
def test_a_broken_gate_fails_the_invariant_tests(case: Callable[[], None]) -> None:
    """Each broken gate fails each of these invariant tests."""
    with pytest.raises(AssertionError):
        case()
