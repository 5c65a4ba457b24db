"""One catalog of log events (issue 17): every event the code logs is in it, every entry is
logged somewhere, and the docs' list of events is the catalog."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import supervisor
from supervisor.base.catalog import MEANING, EventId

PKG = Path(supervisor.__file__).parent
LOG_METHODS = ("debug", "info", "warning", "error", "exception", "critical")


def log_calls() -> list[tuple[str, ast.Call]]:
    """Every ``<logger>.<level>(...)`` call in the package, with its file."""
    out = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and node.args
            ):
                out.append((str(path.relative_to(PKG.parent)), node))
    return out


def test_no_event_is_logged_by_a_string_of_its_own() -> None:
    """Every log call names its event from the catalog, never with a literal string (a typo
    would be a new, undocumented event)."""
    literal = [
        f"{where}:{call.lineno}"
        for where, call in log_calls()
        if isinstance(call.args[0], ast.Constant | ast.JoinedStr)
    ]
    assert literal == []


def test_every_catalog_entry_is_used_and_explained() -> None:
    """No dead entry: each id is referenced in the code; each has a level and a meaning."""
    text = "\n".join(p.read_text() for p in PKG.rglob("*.py") if p.name != "catalog.py")
    unused = [e.name for e in EventId if f"EventId.{e.name}" not in text]
    assert unused == []
    assert set(MEANING) == set(EventId)
    assert all(level in ("debug", "info", "warning", "error") for level, _ in MEANING.values())


def test_ids_are_dotted_lowercase_and_unique() -> None:
    """Ids are ``area.what`` in lower case, and no two members share one."""
    assert all(re.fullmatch(r"[a-z]+\.[a-z_]+", e.value) for e in EventId)
    assert len({e.value for e in EventId}) == len(EventId)


DOCS = PKG.parent / "docs" / "metrics-and-logs.md"


def table_rows(heading: str) -> list[list[str]]:
    """The rows of the first table under ``heading`` in the metrics and logs page."""
    text = DOCS.read_text()
    section = text[text.index(heading) :]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("| `"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_the_docs_list_of_events_is_the_catalog() -> None:
    """docs/metrics-and-logs.md lists exactly the catalog's events, with their levels."""
    documented = {(r[0].strip("`"), r[1]) for r in table_rows("## Logs")}
    assert documented == {(e.value, MEANING[e][0]) for e in EventId}


def test_the_docs_list_of_metrics_is_what_the_code_writes() -> None:
    """docs/metrics-and-logs.md lists exactly the metric families the code can write."""
    from supervisor.gate.metrics import FAMILIES, PREFIX

    documented = {r[0].strip("`").split("{")[0] for r in table_rows("## Metrics")}
    written = {
        PREFIX + name + ("_total" if kind == "counter" else "")
        for name, (kind, _) in FAMILIES.items()
    }
    assert documented == written
