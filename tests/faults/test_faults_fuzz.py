"""Fuzzing config and state parsing: every input ends in a value or a documented error."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.base.errors import ConfigError
from supervisor.core.policy import Policy, decide
from supervisor.core.state import AgentState, StateFormatError, from_document
from supervisor.storage.config import KEYS, Config, load_config
from supervisor.storage.store import StateStore

FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "10m",
            "0.6s",
            "-1s",
            "1e9d",
            "nan",
            "3h30m",
            "",
            "http://x",
            "auto",
            "address",
            "index",
            "hash",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=10,
)
known = st.sampled_from([k.path for k in KEYS])


def toml_value(v: Any) -> str:
    """Render a Python value as TOML where possible (json is close enough for scalars)."""
    if v is None:
        return '""'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v != v:
        return "nan"
    if isinstance(v, float) and v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, dict):
        return "{" + ", ".join(f'"{k}" = {toml_value(x)}' for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)


@FUZZ
@given(st.dictionaries(known, values, max_size=8))
def test_fuzzed_known_keys_load_or_fail_cleanly(doc: dict[str, Any]) -> None:
    """Random values for real keys give a Config or one ConfigError line, never a crash."""
    top = {k: v for k, v in doc.items() if "." not in k}
    tables: dict[str, dict[str, Any]] = {}
    for k, v in doc.items():
        if "." in k:
            t, sub = k.split(".", 1)
            tables.setdefault(t, {})[sub] = v
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for t, items in tables.items():
        lines.append(f"[{t}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in items.items()]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.toml"
        p.write_text("\n".join(lines))
        try:
            cfg = load_config(p, env={})
        except ConfigError as exc:
            assert "\n" not in str(exc) and str(p) in str(exc)
            return
    assert isinstance(cfg, Config)
    if cfg.cluster_size is not None:
        d2 = decide(cfg.policy("a"), AgentState("a"), 1.8e9)
        assert d2.allowed


@FUZZ
@given(st.text(max_size=300))
def test_fuzzed_text_config_loads_or_fails_cleanly(text: str) -> None:
    """Arbitrary text as a config file ends in a Config or a ConfigError."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.toml"
        p.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            load_config(p, env={})
        except ConfigError as exc:
            assert "\n" not in str(exc)


@FUZZ
@given(st.dictionaries(st.sampled_from([k.env for k in KEYS]), st.text(max_size=20), max_size=6))
def test_fuzzed_environment_loads_or_fails_cleanly(env: dict[str, str]) -> None:
    """Random AGENT_SUPERVISOR_* values give a Config or a ConfigError naming the variable."""
    try:
        load_config(env=env)
    except ConfigError as exc:
        assert (
            str(exc).startswith("environment AGENT_SUPERVISOR_")
            or "window" in str(exc)
            or "slot" in str(exc)
            or "[identity]" in str(exc)
            or "probe" in str(exc)
        )


run_docs = st.fixed_dictionaries(
    {},
    optional={
        "started_at": values | st.just("2026-11-29T00:00:00Z"),
        "via": values,
        "ended_at": values,
        "exit_code": values,
        "end_source": values,
        "user": values,
        "reason": values,
    },
)
state_docs = st.fixed_dictionaries(
    {},
    optional={
        "schema": st.one_of(st.just(1), values),
        "agent": st.one_of(st.just("a"), values),
        "runs": st.one_of(st.lists(run_docs, max_size=5), values),
        "hold": values,
        "override": values,
    },
)


@FUZZ
@given(state_docs)
def test_fuzzed_state_documents_parse_or_are_refused(doc: dict[str, Any]) -> None:
    """Random state documents give a format error, or an AgentState on which decide answers
    consistently: a hold refuses, an empty history starts, a refusal names a later time at
    which the same state is allowed, an indefinite hold names none."""
    try:
        state = from_document(doc, "a")
    except StateFormatError:
        return
    p = Policy(agent="a", node="n", cluster_size=10, window=600.0, offset=0.5, slot_mode="hash")
    now = 1.8e9
    d = decide(p, state, now)
    assert (d.agent, d.node, d.window_seconds, d.decided_at) == ("a", "n", 600.0, now)
    hold = state.hold
    held = hold is not None and hold.active(now)
    if held:
        assert not d.allowed and d.event == "gate.held"
    elif not state.runs:
        assert d.allowed and d.start  # nothing ran, nothing holds it: a first start
    if d.allowed:
        assert d.next_allowed_at is None and d.start and not held
    elif d.next_allowed_at is None:
        assert held and hold is not None and hold.until is None  # held until released
    else:
        # A refusal names a later time, and at that time the same state is let through.
        assert d.next_allowed_at > now
        assert decide(p, state, d.next_allowed_at).allowed


@FUZZ
@given(st.binary(max_size=400))
def test_fuzzed_state_bytes_always_read(raw: bytes) -> None:
    """Any bytes in the state file read as a state (quarantined if bad), never an exception."""
    with tempfile.TemporaryDirectory() as d:
        sd = Path(d) / "s"
        store = StateStore(sd)
        store.prepare()
        (sd / "a.json").write_bytes(raw)
        tx = store.read("a", 1.8e9)
        assert isinstance(tx.state, AgentState)
        assert (not tx.quarantined) or Path(tx.quarantined[0]).read_bytes() == raw
