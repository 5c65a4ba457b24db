"""The package layout is the architecture: each folder has a purpose line, imports only point
down the layers (lazy imports inside functions included), no module imports itself in a
cycle, and every shared Literal and default is defined in one place."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import supervisor

PKG = Path(supervisor.__file__).parent
#: Bottom to top. A module may import its own folder and the folders below it, never above.
LAYERS = ("base", "core", "storage", "node", "gate", "containers", "fleet", "cli")


def modules() -> Iterator[tuple[str, Path]]:
    """Every module of the package as (dotted name, path)."""
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield ".".join(parts), path


def imports_of(path: Path) -> set[str]:
    """Every ``supervisor...`` module ``path`` imports, at module level or in a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("supervisor"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("supervisor"):
            assert node.module is not None
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(
                    sub if (PKG.parent / (sub.replace(".", "/") + ".py")).exists() else node.module
                )
    return found


def layer(module: str) -> int:
    """The layer index of ``supervisor.<folder>...``; the top level sits above everything."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def test_every_folder_is_a_layer_with_a_purpose_line() -> None:
    """Each folder under supervisor/ is one of the layers and says what it is for."""
    folders = sorted(p.name for p in PKG.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(LAYERS)
    for name in LAYERS:
        doc = ast.get_docstring(ast.parse((PKG / name / "__init__.py").read_text()))
        assert doc and len(doc) > 30, name


@pytest.mark.parametrize(("module", "path"), list(modules()), ids=[m for m, _ in modules()])
def test_imports_point_only_down(module: str, path: Path) -> None:
    """No module imports from a layer above its own."""
    upward = sorted(i for i in imports_of(path) if layer(i) > layer(module))
    assert upward == [], f"{module} imports upward: {upward}"


def test_no_import_cycles() -> None:
    """The module import graph (lazy imports included) has no cycle."""
    graph = {m: {i for i in imports_of(p) if i != m} for m, p in modules()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        if state.get(m) == 2:
            return
        assert state.get(m) != 1, " -> ".join([*trail, m])
        state[m] = 1
        for dep in sorted(graph.get(m, ())):
            if dep in graph:
                visit(dep, [*trail, m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])


#: Names that must be assigned at module level exactly once in the whole package.
DEFINED_ONCE = (
    "SlotMode",
    "SLOT_MODES",
    "ScenarioKind",
    "SCENARIOS",
    "Via",
    "EndSource",
    "WindowConfig",
    "DEFAULT_MAX_MULTIPLIER",
    "DEFAULT_STABLE_AFTER",
    "DEFAULT_DOCKER_GRACE",
    "SAME_RUN_SLACK",
    "POLL_SECONDS",
)


def test_shared_types_and_defaults_are_defined_once() -> None:
    """Each shared Literal, dataclass and default has one home (no copy kept equal by a test)."""
    seen: dict[str, list[str]] = {name: [] for name in DEFINED_ONCE}
    for module, path in modules():
        for node in ast.parse(path.read_text()).body:
            targets: list[str] = []
            if isinstance(node, ast.Assign):
                targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                targets = [node.target.id]
            elif isinstance(node, ast.ClassDef):
                targets = [node.name]
            for name in targets:
                if name in seen:
                    seen[name].append(module)
    assert {n: len(m) for n, m in seen.items()} == dict.fromkeys(DEFINED_ONCE, 1), seen


def test_no_default_of_the_policy_is_written_as_a_bare_number() -> None:
    """stable_after and max_multiplier defaults come from core.policy's constants."""
    for module, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.target.id in ("stable_after", "max_multiplier")
            ):
                assert not isinstance(node.value, ast.Constant), (module, node.target.id)


def calls(path: Path) -> Iterator[tuple[str, ast.Call]]:
    """Every call in ``path`` with the called name (``f`` of ``f(...)``, ``m`` of ``x.m(...)``)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                yield func.id, node
            elif isinstance(func, ast.Attribute):
                yield func.attr, node


#: What writes an agent's state file (the store's writing methods and a transaction's write).
STATE_WRITERS = ("write", "write_state", "journal_end", "clear_journal")


def test_only_the_gate_writes_the_state() -> None:
    """Issue 16: the Gate service is the one owner of the history: outside the store itself, no
    module calls a state-writing method (the simulator keeps its states in memory)."""
    writers = {
        module
        for module, path in modules()
        if module not in ("supervisor.storage.store", "supervisor.base.files")
        for name, _ in calls(path)
        if name in STATE_WRITERS and "transaction" in path.read_text()
    }
    assert writers == {"supervisor.gate.service"}


def test_only_core_computes_transitions() -> None:
    """Issue 16: a state is changed only by core.events.apply: outside core no module builds a
    run, an ask or an anchor, or copies a state with changes; an AgentState outside core is
    only ever an empty one (a missing file, a forced start that cannot be recorded)."""
    built: list[str] = []
    for module, path in modules():
        if module.startswith("supervisor.core"):
            continue
        for name, call in calls(path):
            if name in ("Run", "Ask", "Anchor", "rebase", "clamp_future"):
                built.append(f"{module}: {name}")
            if name == "AgentState" and (len(call.args) > 1 or call.keywords):
                built.append(f"{module}: AgentState with history")
            if name == "replace" and call.args and "state" in ast.unparse(call.args[0]).lower():
                built.append(f"{module}: replace of a state")
    assert built == []


def test_the_simulator_runs_the_gates_transitions() -> None:
    """Issue 16: `simulate` decides with core.policy.decide and records with core.events.apply,
    the functions the Gate uses, and never touches the store or the Gate."""
    fleet = [(m, p) for m, p in modules() if m.startswith("supervisor.fleet")]
    used = set().union(*(imports_of(p) for _, p in fleet))
    assert {"supervisor.core.events", "supervisor.core.policy"} <= used
    assert not any(i.startswith(("supervisor.storage.store", "supervisor.gate")) for i in used)
    names = {name for _, p in fleet for name, _ in calls(p)}
    assert {"decide", "apply"} <= names or {"decide", "apply_all"} <= names
