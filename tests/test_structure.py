"""The house rules of the package, checked from its source (ast), not from what a test session happened to import.

- no import cycles between spikeforge's modules (imports inside functions count: a lazy import hides a cycle, it
  does not remove it);
- no module imports another module's private (underscore) name;
- one-way dependencies: hw/ never imports sw/, sim/ or torch; sw/ never imports hw/ or sim/; sim/ never reaches
  torch or sw/, even through other modules; spikeforge/'s own modules (the network file, the CLI, the records)
  import no torch when they are imported;
- every module says what it is for (a docstring), and none is longer than 500 lines unless its docstring says why.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 500
LONG_REASON = "Longer than 500 lines because"


def _package_dirs() -> dict[str, Path]:
    """pyproject.toml's package-dir: import name -> folder (the repository's folders map onto one namespace)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {name: ROOT / folder for name, folder in config["tool"]["setuptools"]["package-dir"].items()}


def _modules() -> dict[str, Path]:
    """Every module of the installed packages: dotted name -> file (subpackages included)."""
    found = {}
    for name, folder in _package_dirs().items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([name, *parts])] = path
    return found


MODULES = _modules()


class _Imports(ast.NodeVisitor):
    """(imported module, names, line, at module level) for every import statement of one module."""

    def __init__(self, module: str, is_package: bool):
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str, list[str], int, bool]] = []
        self.depth = 0

    def _scoped(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scoped

    def visit_Import(self, node: ast.Import):
        for alias in node.names:
            self.found.append((alias.name, [], node.lineno, self.depth == 0))

    def visit_ImportFrom(self, node: ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = self.package.split(".")
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        self.found.append((base, [alias.name for alias in node.names], node.lineno, self.depth == 0))


def _imports(module: str) -> list[tuple[str, list[str], int, bool]]:
    path = MODULES[module]
    visitor = _Imports(module, path.name == "__init__.py")
    visitor.visit(ast.parse(path.read_text(), str(path)))
    return visitor.found


def _edges(module_level_only: bool = False) -> dict[str, set[str]]:
    """module -> the modules (ours, or a third party's top-level name) it imports."""
    edges: dict[str, set[str]] = {}
    for module in MODULES:
        targets = set()
        for base, names, _line, top in _imports(module):
            if module_level_only and not top:
                continue
            hits = [f"{base}.{name}" for name in names if f"{base}.{name}" in MODULES]
            if hits:
                targets.update(hits)
                if len(hits) < len(names) and base in MODULES:  # `from pkg import submodule, name`
                    targets.add(base)
            elif base in MODULES:
                targets.add(base)
            else:
                targets.add(base.split(".")[0])
        edges[module] = targets
    return edges


def _reach(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in edges.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_module_map_is_complete():
    """The walk finds the package's modules (a broken walk would make every rule below pass vacuously)."""
    for module in ("spikeforge.netimage", "spikeforge.cli", "spikeforge.sw.train.schedule", "spikeforge.sw.export",
                   "spikeforge.hw.layers.layer_unit", "spikeforge.sim.rtl", "spikeforge.record"):
        assert module in MODULES, module
    assert len(MODULES) > 40


def test_no_import_cycles():
    edges = {m: {t for t in targets if t in MODULES} for m, targets in _edges().items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def strongconnect(v):  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
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
            if len(component) > 1 or v in edges[v]:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_imports_a_private_name_of_another():
    bad = []
    for module in MODULES:
        for base, names, line, _top in _imports(module):
            if base.startswith("spikeforge") and base != module:
                bad += [f"{MODULES[module].name}:{line}: {name} from {base}" for name in names
                        if name.startswith("_") and not name.startswith("__")]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def _violations(prefix: str, forbidden: tuple[str, ...], module_level_only: bool = False,
                transitive: bool = False) -> list[str]:
    edges = _edges(module_level_only)
    bad = []
    for module in MODULES:
        if not (module == prefix or module.startswith(prefix + ".")):
            continue
        reached = _reach(edges, module) if transitive else edges[module]
        bad += [f"{module} -> {t}" for t in sorted(reached) if any(t == f or t.startswith(f + ".") for f in forbidden)]
    return bad


def test_hw_never_imports_sw_sim_or_torch():
    assert not _violations("spikeforge.hw", ("spikeforge.sw", "spikeforge.sim", "torch"), transitive=True)


def test_sw_never_imports_hw_or_sim():
    assert not _violations("spikeforge.sw", ("spikeforge.hw", "spikeforge.sim"), transitive=True)


def test_sim_needs_no_torch():
    assert not _violations("spikeforge.sim", ("spikeforge.sw", "torch"), transitive=True)


def test_the_top_level_package_imports_no_torch_when_imported():
    """spikeforge/'s own modules (not the sw/hw/sim packages) load no torch, also through what they import at module
    level; the command line imports the trainer and the reference inside its commands."""
    top = [m for m in MODULES if m.count(".") <= 1 and not m.startswith(("spikeforge.sw", "spikeforge.hw",
                                                                           "spikeforge.sim"))]
    edges = _edges(module_level_only=True)
    bad = [f"{m} -> {t}" for m in top for t in sorted(_reach(edges, m))
           if t == "torch" or t.startswith("spikeforge.sw")]
    assert "spikeforge.cli" in top and not bad, bad


def test_the_rules_catch_what_they_are_written_for(tmp_path, monkeypatch):
    """The checks above on a made-up package: a cycle through a lazy import, a private import, hw importing torch."""
    fake = {"spikeforge.a": "from spikeforge import b\n", "spikeforge.b": "def f():\n    from spikeforge.a import _x\n",
            "spikeforge.hw.c": "def g():\n    import torch\n"}
    for name, text in fake.items():
        (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.setitem(globals(), "MODULES", {n: tmp_path / f"{n}.py" for n in fake})
    edges = _edges()
    assert "spikeforge.a" in edges["spikeforge.b"] and "spikeforge.b" in edges["spikeforge.a"]
    assert _violations("spikeforge.hw", ("torch",)) == ["spikeforge.hw.c -> torch"]
    with pytest.raises(AssertionError, match="_x from spikeforge.a"):
        test_no_module_imports_a_private_name_of_another()
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycles()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_what_it_is_and_stays_short(module):
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    doc = ast.get_docstring(tree)
    assert doc, f"{path.relative_to(ROOT)} has no docstring saying what it is for"
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES or LONG_REASON in doc, (
        f"{path.relative_to(ROOT)} has {lines} lines; split it, or say why in its docstring ('{LONG_REASON} ...')")
