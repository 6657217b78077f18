"""The code's shape (ARCHITECTURE.md): no import cycle in the library, no Streamlit in it, small modules,
one cache root. Fast, no data: the modules are parsed with ``ast``, not imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

LIBRARY = "sinf_core"
MAX_LINES = 600
# Modules allowed over MAX_LINES, each with its reason (paths relative to the repository). Empty: no
# module is; add one only with the reason and the plan to split it.
OVER_LIMIT: dict[str, str] = {}


def _modules(package: str = LIBRARY) -> dict[str, tuple[Path, bool]]:
    """{dotted module name: (file, is a package __init__)} of every .py file under ``package``."""
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def import_graph(package: str = LIBRARY) -> dict[str, dict[str, int]]:
    """{module: {imported module of ``package``: first line}} from every import statement, at module
    level or inside functions alike. ``from X import name`` counts as an import of ``X.name`` when that
    is a module, else of ``X``; importing ``a.b.c`` from outside ``a.b`` also imports the packages
    ``a.b`` (their ``__init__`` runs first), so those count too."""
    mods = _modules(package)

    def owner(name: str) -> str | None:  # the deepest module of the package that ``name`` lies in
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for mod, (path, is_pkg) in mods.items():
        here = mod if is_pkg else mod.rpartition(".")[0]
        found: dict[str, int] = {}

        def add(target: str | None, line: int) -> None:
            while target and target != package:
                if target != mod and not (mod + ".").startswith(target + "."):
                    found.setdefault(target, line)
                target = target.rpartition(".")[0]

        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == package or a.name.startswith(package + "."):
                        add(owner(a.name), node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    full = ".".join(base + ([node.module] if node.module else []))
                else:
                    full = node.module or ""
                if full != package and not full.startswith(package + "."):
                    continue
                for a in node.names:
                    sub = f"{full}.{a.name}"
                    add(sub if sub in mods else owner(full), node.lineno)
        graph[mod] = found
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, {})):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state:
                cyc = visit(w)
                if cyc:
                    return cyc
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            cyc = visit(v)
            if cyc:
                return cyc
    return None


def test_the_library_has_no_import_cycle_not_even_inside_functions():
    graph = import_graph()
    cyc = find_cycle(graph)
    if cyc:
        hops = [f"{a} imports {b} (line {graph[a][b]})" for a, b in zip(cyc, cyc[1:])]
        pytest.fail("import cycle in sinf_core: " + " -> ".join(cyc) + "\n  " + "\n  ".join(hops))


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_the_bench_sits_below_the_pipeline():
    graph = import_graph()
    bench = [m for m in graph if m == "sinf_core.bench" or m.startswith("sinf_core.bench.")]
    assert bench, "no sinf_core.bench"
    for m in bench:
        assert not any(t == "sinf_core.pipeline" or t.startswith("sinf_core.commands") for t in graph[m]), m


def test_no_library_module_imports_streamlit():
    bad = []
    for mod, (path, _) in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{mod}:{node.lineno} imports {n}" for n in names if n.split(".")[0] == "streamlit"]
    assert not bad, bad


def test_no_module_is_over_600_lines():
    over = {}
    for package in (LIBRARY, "app"):
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            n = len(path.read_text().splitlines())
            if n > MAX_LINES and rel not in OVER_LIMIT:
                over[rel] = n
    assert not over, f"modules over {MAX_LINES} lines (split them): {over}"
    for rel in OVER_LIMIT:  # an allowance is removed once it is no longer needed
        assert (REPO / rel).is_file(), f"{rel} is allowed over the limit but does not exist"


def test_one_cache_root_and_it_expands_the_home_folder(monkeypatch, tmp_path):
    # there were two cache_dir functions, one expanding "~" and one not: a "~" in SINF_CACHE_DIR split the caches
    import sinf_core.io
    import sinf_core.scores.cache
    import sinf_core.stats

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SINF_CACHE_DIR", "~/sinf-cache")
    want = tmp_path / "sinf-cache"
    assert sinf_core.io.cache_dir() == want
    assert sinf_core.stats.cache_dir() == want
    assert sinf_core.scores.cache.cache_dir() == want
    assert sinf_core.scores.cache.cache_dir("~/elsewhere") == tmp_path / "elsewhere"
    assert sinf_core.stats.cache_dir is sinf_core.scores.cache.cache_dir is sinf_core.io.cache_dir
    monkeypatch.delenv("SINF_CACHE_DIR")
    assert sinf_core.io.cache_dir() == tmp_path / ".cache" / "sinf"
