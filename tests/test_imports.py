"""The package's shape: no import circles among ``exfm_plugin`` and ``data_prep`` modules, and small modules.

An import circle makes a module's names depend on which module happened to be imported first
(half-initialised modules, ``ImportError: cannot import name``), and a reader cannot follow the
code one way. Only *module-level* imports count, the ones that run when the module is imported:
an import inside a function runs later, when every module is complete, and an import under
``if TYPE_CHECKING:`` never runs. Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and
``a.b`` first; those implicit parent imports are not edges (Python handles a submodule imported
while its package initialises), only the modules an ``import`` statement names are.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("exfm_plugin", "data_prep")
MAX_LINES = 400

#: Files over MAX_LINES that other engineers are splitting (issue 23), each with the most lines
#: it may have. The allowance only shrinks: a file must not grow past its entry, and an entry
#: whose file is back under MAX_LINES (or gone) must be deleted (the test says so).
LINE_ALLOWANCE: dict[str, int] = {
}


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``packages`` under ``root``."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run at import time: not in functions, not under TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _module_level_imports(node.body)
            found += _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                found += _module_level_imports(block)
        elif isinstance(node, (ast.With, ast.For, ast.While, ast.ClassDef)):  # class bodies run at import
            found += _module_level_imports(node.body)
            found += _module_level_imports(getattr(node, "orelse", []))
    return found


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its longest prefix that is one of ``modules`` (``import a.b.func`` is not a thing,
    but ``from a.b import name`` names an attribute of ``a.b``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ``modules`` that its module-level imports name."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _module_level_imports(ast.parse(path.read_text(encoding="utf-8"), str(path)).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")
                    base = ".".join(base_parts[:len(base_parts) - (node.level - 1)])
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                # ``from pkg import sub`` imports the submodule; ``from pkg import name`` the package
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                           for alias in node.names]
            edges |= {t for t in (_known(t, modules) for t in targets) if t is not None and t != name}
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth <= number of modules (a few hundred)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


# --------------------------------------------------------------------------- the checker itself
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_a_module_level_circle_and_ignores_lazy_and_type_checking_imports(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import f\n",                       # a -> b
        "pkg/b.py": "from . import c\n\ndef f():\n    from .a import g\n",  # b -> c; b -> a is lazy
        "pkg/c.py": "import pkg.a\n",                          # c -> a: a -> b -> c -> a
        "pkg/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .e import X\n",
        "pkg/e.py": "from pkg.d import Y\n",                    # e -> d only (d -> e never runs)
        "pkg/sub/__init__.py": "from .x import h\n",            # sub -> sub.x
        "pkg/sub/x.py": "from ..d import Z\nclass K:\n    from . import y\n",  # class bodies run
        "pkg/sub/y.py": "",
    })
    modules = module_files(tmp_path, ("pkg",))
    graph = import_graph(modules)
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.c"}
    assert graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.d"] == set()
    assert graph["pkg.e"] == {"pkg.d"}
    assert graph["pkg.sub"] == {"pkg.sub.x"}
    assert graph["pkg.sub.x"] == {"pkg.d", "pkg.sub.y"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_checker_sees_a_circle_through_a_package_init(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "from .m import run\n", "pkg/m.py": "from pkg import CONSTANT\n"})
    assert find_cycles(import_graph(module_files(tmp_path, ("pkg",)))) == [["pkg", "pkg.m"]]


# --------------------------------------------------------------------------- the real packages
def test_no_import_circles():
    modules = module_files(ROOT, PACKAGES)
    assert "exfm_plugin.das.metastore.factory" in modules  # the walk found the packages
    graph = import_graph(modules)
    assert "exfm_plugin.das.metastore.sqlite" in graph["exfm_plugin.das.metastore.factory"]
    cycles = find_cycles(graph)
    assert not cycles, "module-level import circles (move the shared piece to a module both import):\n" + \
        "\n".join(" <-> ".join(c) for c in cycles)


def _line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_modules_are_small():
    counts = {str(p.relative_to(ROOT)): _line_count(p) for p in module_files(ROOT, PACKAGES).values()}
    too_long = {p: n for p, n in counts.items() if n > LINE_ALLOWANCE.get(p, MAX_LINES)}
    assert not too_long, f"modules over {MAX_LINES} lines (or over their allowance): split them: {too_long}"
    stale = {p: counts.get(p) for p in LINE_ALLOWANCE if counts.get(p, 0) <= MAX_LINES}
    assert not stale, f"delete these from LINE_ALLOWANCE in {Path(__file__).name}, they fit now: {stale}"


@pytest.mark.parametrize("package", ["spd", "metastore", "augment", "service", "cli"])
def test_das_subpackage_modules_import_no_backend_or_cli_upward(package):
    """Inside das the dependencies point one way: cli -> service -> augment -> metastore/spd;
    the metastore contract imports no backend, and no subsystem imports the CLI."""
    graph = import_graph(module_files(ROOT, PACKAGES))
    das = "exfm_plugin.das"
    order = {"spd": 0, "metastore": 0, "augment": 1, "service": 2, "cli": 3}
    for module, targets in graph.items():
        if not module.startswith(f"{das}.{package}"):
            continue
        for target in targets:
            if target.startswith(f"{das}.") and target.split(".")[2] != package:
                assert order[target.split(".")[2]] < order[package], f"{module} imports {target}"
    assert not {t for t in graph[f"{das}.metastore.base"] if t.startswith(f"{das}.metastore.")}
