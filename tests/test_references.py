"""Docs kept true (issue 17): every module, function and file that a docstring, a comment or a
page of the docs names exists."""

from __future__ import annotations

import ast
import importlib
import io
import re
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: ``supervisor.core.policy.decide``, ``supervisor.gate.service.Gate.wait`` ...
DOTTED = re.compile(r"(?<![\w./-])(supervisor(?:\.[A-Za-z_]\w*)+)")
#: ``supervisor/core/policy.py``, ``tests/test_cli.py``, ``docs/fleet.md``, ``bench/lab``.
PATHS = re.compile(
    r"(?<![\w./-])((?:supervisor|tests|bench|docs|systemd|compose|\.ci)/[\w./-]*[\w/])"
)


def sources() -> list[Path]:
    """Every file whose words could name code: the package, tests, bench, docs, README."""
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for folder in ("supervisor", "tests", "bench"):
        files += sorted((REPO / folder).rglob("*.py"))
    return [f for f in files if "__pycache__" not in f.parts]


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` is a module, or an attribute (of an attribute...) of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def prose(path: Path) -> str:
    """What a file says in words: a page of the docs whole; of Python code, its docstrings and
    comments (names in code are checked by running it)."""
    text = path.read_text()
    if path.suffix != ".py":
        return text
    words = [
        ast.get_docstring(node) or ""
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    words += [
        tok.string
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.type == tokenize.COMMENT
    ]
    return "\n".join(words)


#: mutmut's name of a mutant: ``module.x_function__mutmut_N`` or
#: ``module.xǁClassǁmethod__mutmut_N``.
MUTANT = re.compile(r"^(?P<module>.+?)\.x(?:ǁ(?P<cls>\w+?)ǁ|_)(?P<func>\w+?)__mutmut_\d+$")


def unmutated(dotted: str) -> str:
    """The function a mutant's name names (``supervisor.core.policy.multiplier`` for
    ``supervisor.core.policy.x_multiplier__mutmut_1``); any other name as it is."""
    m = MUTANT.match(dotted)
    if m is None:
        return dotted
    return ".".join(p for p in (m["module"], m["cls"], m["func"]) if p)


def test_a_mutants_name_names_its_function() -> None:
    """The equivalent mutants' page names mutants; each must name a function that exists."""
    assert unmutated("supervisor.core.policy.x_multiplier__mutmut_1") == (
        "supervisor.core.policy.multiplier"
    )
    assert unmutated("supervisor.gate.service.xǁGateǁ_save__mutmut_6") == (
        "supervisor.gate.service.Gate._save"
    )
    assert unmutated("supervisor.core.state.x__lost_why__mutmut_4") == (
        "supervisor.core.state._lost_why"
    )
    assert not resolves(unmutated("supervisor.core.policy.x_no_such__mutmut_1"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_name_a_file_mentions_exists(path: Path) -> None:
    """Dotted names resolve to a module or attribute; repository paths exist (a path made of a
    pattern, e.g. ``bench/lab-<N>.png``, is not a path)."""
    text = prose(path)
    missing = [
        name
        for name in sorted(set(DOTTED.findall(text)))
        if not resolves(unmutated(name.rstrip(".")))
    ]
    for match in PATHS.finditer(text):
        rel = match.group(1).rstrip(".")
        after = text[match.end() : match.end() + 2]
        if any(ch in after for ch in "<*{$") or rel.endswith("/..."):
            continue
        if not (REPO / rel).exists():
            missing.append(rel)
    assert missing == []
