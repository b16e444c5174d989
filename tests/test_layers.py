"""The package's layering (shared LAYOUT.md), read from the source with `ast`, nothing imported.

Every `import` / `from ... import` of an rmbench_fast module inside rmbench_fast/ is an edge
from the importing module to the imported one (a submodule when the imported name is one, else
the module itself). The tests fail on:
- an edge that points upward in LAYERS (a folder imports its own folder and lower layers only);
- a private name (`_x`) taken from another file (what two files share is public in the lower one);
- a cycle between modules (imports inside functions included: they are never a way around one);
- a module named like a standard-library module;
- an import inside a function without a comment, on its lines or the line above, that says why:
  "optional dependency" or "start-up cost".
Imports under `if TYPE_CHECKING:` are annotations only and are not edges.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "rmbench_fast"
P = "rmbench_fast"

# Low to high; a module's layer is that of its first package below rmbench_fast (or its own name).
LAYERS: dict[str, int] = {
    "errors": 0,
    "records": 0,
    "settings": 0,
    "utils": 0,
    "kernels": 0,  # the top-level kernels/ folder, placed at rmbench_fast/kernels by the wheel
    "_core": 0,
    "_cuda": 0,
    "inputs": 1,
    "scoring": 2,
    "backends": 3,
    "engine": 3,
    "store": 4,
    "results": 5,
    "benchmarks": 6,
    "pipeline": 7,
    "judge": 8,
    "perf": 9,
    "commands": 10,
    "__main__": 11,
}
# The package's face (`rmbench_fast/__init__.py`) may be imported by anyone for `__version__`;
# its own lazy import of the pipeline (in `evaluate`) is start-up cost.
FACE = P


@dataclass(frozen=True)
class Edge:
    src: str  # importing module
    dst: str  # imported module
    names: tuple[str, ...]  # names taken from it (empty for `import x`)
    line: int

    def where(self) -> str:
        return f"{self.src}:{self.line} -> {self.dst}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def known_module(name: str, mods: dict[str, Path]) -> bool:
    return name in mods or name in (f"{P}._core", f"{P}._cuda") or name.split(".")[:2] == [P, "kernels"]


def type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                for n in ast.walk(sub):
                    out.add(id(n))
    return out


def edges_of(mod: str, path: Path, mods: dict[str, Path]) -> Iterator[Edge]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = type_checking_nodes(tree)
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == P or a.name.startswith(P + "."):
                    yield Edge(mod, a.name, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = pkg[: len(pkg) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != P and not target.startswith(P + "."):
                continue
            plain = []
            for a in node.names:
                sub = f"{target}.{a.name}"
                if known_module(sub, mods):
                    yield Edge(mod, sub, (), node.lineno)
                else:
                    plain.append(a.name)
            if plain:
                yield Edge(mod, target, tuple(plain), node.lineno)


def all_edges() -> list[Edge]:
    mods = modules()
    return [e for m, p in mods.items() for e in edges_of(m, p, mods)]


def layer(mod: str) -> int | None:
    parts = mod.split(".")
    if len(parts) < 2:
        return None  # the face
    if parts[-1] == "__main__":
        return LAYERS["__main__"]  # `python -m` entry points sit above everything
    return LAYERS.get(parts[1])


def folder(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in modules() if m != FACE and layer(m) is None)
    assert not missing, f"modules outside LAYERS (add their folder, or move them): {missing}"


def test_no_upward_import() -> None:
    bad = []
    for e in all_edges():
        if e.src == FACE or e.dst == FACE or folder(e.src) == folder(e.dst):
            continue
        src, dst = layer(e.src), layer(e.dst)
        if src is not None and dst is not None and dst > src:
            bad.append(f"{e.where()} (layer {src} imports layer {dst})")
    assert not bad, "imports pointing upward:\n" + "\n".join(bad)


def test_no_private_name_across_files() -> None:
    mods = modules()
    bad = [
        f"{e.where()} imports {n}"
        for e in all_edges()
        for n in e.names
        if n.startswith("_") and not n.startswith("__") and not known_module(f"{e.dst}.{n}", mods)
    ]
    bad += [
        f"{e.src}:{e.line} takes the private module {e.dst}"
        for e in all_edges()
        if e.dst.rsplit(".", 1)[-1].startswith("_")
        and not e.dst.endswith("__")
        and e.dst not in (f"{P}._core", f"{P}._cuda")
        and e.dst.rsplit(".", 1)[0] != e.src.rsplit(".", 1)[0]
    ]
    assert not bad, "private names taken across files:\n" + "\n".join(bad)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (a list of nodes, first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle() -> None:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for e in all_edges():
        # The face is initialised before any of its submodules, so taking `__version__` from it
        # closes no cycle.
        if e.dst in mods and e.dst not in (e.src, FACE):
            graph[e.src].add(e.dst)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_standard_library_name() -> None:
    bad = sorted(m for m in modules() if m.rsplit(".", 1)[-1] in sys.stdlib_module_names)
    assert not bad, f"modules named like the standard library's: {bad}"


LAZY_REASONS = ("optional dependency", "start-up cost")


def unexplained_lazy_imports(path: Path) -> Iterator[int]:
    """Lines of the imports inside a function of `path` with no comment naming a LAZY_REASONS
    (on the import's own lines or the line right above)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines))
    seen: set[int] = set()
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in seen:
                continue
            seen.add(id(node))
            span = lines[max(node.lineno - 2, 0) : node.end_lineno]
            comments = [ln.split("#", 1)[1] for ln in span if "#" in ln]
            if not any(r in c for c in comments for r in LAZY_REASONS):
                yield node.lineno


def test_unexplained_lazy_import_is_found(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "def f():\n"
        "    import json\n"
        "    # start-up cost: torch\n"
        "    import torch\n"
        "    import ray  # optional dependency: ray\n"
        "    x = 1\n"
        "    from a import (  # why not\n"
        "        b,\n"
        "    )\n"
    )
    assert list(unexplained_lazy_imports(src)) == [2, 7]


def test_every_lazy_import_says_why() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in modules().values()
        for line in unexplained_lazy_imports(path)
    ]
    assert not bad, (
        "imports inside a function need a comment saying why (optional dependency: <pkg>, or "
        "start-up cost: <what it loads>); hoist the others to the module's top:\n" + "\n".join(bad)
    )


def test_the_checks_see_the_package() -> None:
    # A walk that found nothing would pass every test above.
    edges = all_edges()
    assert len(modules()) > 50 and len(edges) > 200
    assert any(e.dst == f"{P}.errors" for e in edges)
