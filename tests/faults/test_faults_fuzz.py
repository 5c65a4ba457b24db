"""Fuzzing config and state parsing: every input ends in a value or a documented error."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.base.errors import ConfigError
from supervisor.core.events import apply_all
from supervisor.core.policy import Policy, decide
from supervisor.core.state import (
    AgentState,
    StateFormatError,
    clamp_future,
    from_document,
    iso,
    to_document,
)
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
@given(
    st.dictionaries(known, values, max_size=8),
    st.one_of(st.none(), st.integers(min_value=1, max_value=20_000)),
)
def test_fuzzed_known_keys_load_or_fail_cleanly(doc: dict[str, Any], size: int | None) -> None:
    """Random values for real keys give a Config or one ConfigError line, never a crash; with a
    cluster size, a first start is told the node's admission slot, at most J (<= W) away, and
    is allowed there."""
    if size is not None:
        doc.setdefault("cluster_size", size)
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
    if cfg.cluster_size is None:
        return
    try:
        policy = cfg.policy("a")
    except ConfigError as exc:  # checks that need the cluster size (J longer than W)
        assert "\n" not in str(exc) and str(p) in str(exc)
        return
    now = 1.8e9
    first = decide(policy, AgentState("a"), now)
    if first.allowed:  # asked exactly at the node's slot
        assert first.start and first.grid == "admission"
        return
    assert first.grid == "admission" and first.next_allowed_at is not None
    assert 0 < first.next_allowed_at - now <= policy.admission_period <= policy.window
    asked = apply_all(AgentState("a"), first.events)
    assert decide(policy, asked, first.next_allowed_at).allowed


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


#: Times around 2027-01-15T08:00:00Z (1.8e9, the ``now`` below): three days before to an hour
#: after (a clock stepped back), whole seconds and not.
times = st.integers(-3 * 86400 * 10, 3600 * 10).map(lambda tenths: iso(1.8e9 + tenths / 10))
texts = st.text(max_size=12)


def noisy(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` 19 times in 20, else any JSON value: most documents parse, and every field
    is sometimes wrong."""
    return st.integers(0, 19).flatmap(lambda n: values if n == 0 else valid)


run_docs = st.fixed_dictionaries(
    {"id": noisy(st.sampled_from(["r1", "r2", "r3"])), "started_at": noisy(times)},
    optional={
        "via": noisy(st.sampled_from(["gate", "force", "override", "docker", "unknown"])),
        "ended_at": noisy(st.none() | times),
        "exit_code": noisy(st.sampled_from([None, 0, 1, 137, 143])),
        "end_source": noisy(st.sampled_from([None, "record-exit", "docker", "exec", "inferred"])),
        "stop": noisy(st.none() | texts),
        "replaces": noisy(st.none() | st.sampled_from(["r1", "r2"])),
        "container": noisy(st.none() | texts),
        "user": noisy(st.none() | texts),
        "reason": noisy(st.none() | texts),
    },
)
flag_docs = st.none() | st.fixed_dictionaries(
    {"user": noisy(st.just("alice")), "reason": noisy(texts), "set_at": noisy(times)},
    optional={"until": noisy(st.none() | times)},
)
ask_docs = st.none() | st.fixed_dictionaries(
    {"at": noisy(times)}, optional={"until": noisy(st.none() | times), "why": noisy(texts)}
)
clock_docs = st.none() | st.fixed_dictionaries(
    {
        "boot_id": noisy(st.just("b00t")),
        "wall": noisy(times),
        "boot": noisy(st.floats(0, 1e6)),
    }
)
state_docs = st.fixed_dictionaries(
    {"schema": noisy(st.sampled_from([1, 2, 3])), "agent": noisy(st.just("a"))},
    optional={
        "runs": noisy(st.lists(run_docs, max_size=5)),
        "hold": noisy(flag_docs),
        "override": noisy(flag_docs),
        "deferral": noisy(flag_docs),
        "ask": noisy(ask_docs),
        "clock": noisy(clock_docs),
    },
)


@FUZZ
@given(state_docs)
def test_fuzzed_state_documents_parse_or_are_refused(doc: dict[str, Any]) -> None:
    """Random state documents (schemas 1 to 3) give a format error, or an AgentState that
    writes back as the same state (the boot clock to 1 µs) and on which decide answers
    consistently: a hold refuses, a first start with nothing asked waits at most one window
    for its admission slot, and a refusal names a later time at which the state it leaves
    behind is allowed; an indefinite hold names none."""
    try:
        state = from_document(doc, "a")
    except StateFormatError:
        return
    written = to_document(state, 1.8e9)
    back = from_document(json.loads(json.dumps(written)), "a")
    assert to_document(back, 1.8e9) == written  # writing what was read changes nothing more
    assert (back.runs, back.hold, back.override, back.ask) == (
        state.runs,
        state.hold,
        state.override,
        state.ask,
    )
    p = Policy(agent="a", node="n", cluster_size=10, window=600.0, offset=0.5, slot_mode="hash")
    now = 1.8e9
    # As the Gate does before deciding: what a clock step back left in the future is now.
    state = clamp_future(state, now)
    d = decide(p, state, now)
    assert (d.agent, d.node, d.window_seconds, d.decided_at) == ("a", "n", 600.0, now)
    hold = state.hold
    held = hold is not None and hold.active(now)
    if held:
        assert not d.allowed and d.event == "gate.held"
    elif (
        not state.runs and state.ask is None and not (state.override and state.override.active(now))
    ):
        # Nothing ran, nothing holds it, nothing was asked: a first start, at its admission
        # slot (invariant 2), which is at most J = W away.
        assert not d.allowed and d.grid == "admission" and d.next_allowed_at is not None
        assert 0 < d.next_allowed_at - now <= p.window
    if d.allowed:
        assert d.next_allowed_at is None and d.start and not held
    elif d.next_allowed_at is None:
        assert held and hold is not None and hold.until is None  # held until released
    else:
        # A refusal names a later time, and at that time the state it leaves is let through.
        assert d.next_allowed_at > now
        assert decide(p, apply_all(state, d.events), d.next_allowed_at).allowed


@FUZZ
@given(st.binary(max_size=400) | state_docs.map(lambda doc: json.dumps(doc).encode()))
def test_fuzzed_state_bytes_always_read(raw: bytes) -> None:
    """Any bytes in the state file read as a state, never an exception: a usable file is read
    alike with and without the lock; a bad one is reported by both, left in place by the
    lock-free read and moved aside with its bytes under the lock."""
    with tempfile.TemporaryDirectory() as d:
        sd = Path(d) / "s"
        store = StateStore(sd)
        store.prepare()
        path = sd / "a.json"
        path.write_bytes(raw)
        free = store.read("a")
        assert isinstance(free.state, AgentState) and free.quarantined == []
        assert path.read_bytes() == raw
        with store.transaction("a", 1.8e9) as tx:
            assert (tx.state, tx.lost) == (free.state, free.lost)
            if tx.lost is None:
                assert tx.quarantined == [] and path.read_bytes() == raw
            else:
                assert tx.state == AgentState("a") and not path.exists()
                (moved,) = tx.quarantined
                assert Path(moved).read_bytes() == raw
