#!/usr/bin/env python3
"""Usage: python scripts/structure.py [SRC]   (default: src)

Issue 21's structure rules over SRC/crossent, read with ast (nothing is imported):
  - import circles at module level (imports that run at import time: the top level, top-level
    if/try blocks other than `if TYPE_CHECKING`, class bodies; not function bodies). `from . import
    x` is an edge to the submodule x, or to the package when x is a name it defines; importing
    a.b.c also imports a and a.b, except a module's own parent packages (imported before it);
  - modules over 400 lines; functions over 80 lines.
Prints each finding; exits 1 if there is any.
"""

from __future__ import annotations

import ast
import pathlib
import sys

MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def modules(root: pathlib.Path) -> dict:
    """dotted name -> (path, is_package)."""
    found = {}
    for path in sorted((root / "crossent").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _import_time_imports(tree: ast.Module) -> list:
    out = []

    def walk(body):
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                    walk(block)
            elif isinstance(node, ast.ClassDef):
                walk(node.body)

    walk(tree.body)
    return out


def import_graph(mods: dict) -> dict:
    graph = {m: set() for m in mods}
    for m, (path, is_package) in mods.items():
        for node in _import_time_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = m.split(".") if is_package else m.split(".")[:-1]
                if node.level:
                    base = base[: len(base) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                parts = t.split(".")
                for i in range(1, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    own_parent = m.startswith(dep + ".")
                    if dep in mods and dep != m and not (own_parent and i < len(parts)):
                        graph[m].add(dep)
    return graph


def circles(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main(root: pathlib.Path) -> int:
    mods = modules(root)
    findings = [f"import circle: {' <-> '.join(c)}" for c in circles(import_graph(mods))]
    for m, (path, _) in mods.items():
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            findings.append(f"module over {MAX_MODULE_LINES} lines: {m} ({lines})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    findings.append(f"function over {MAX_FUNCTION_LINES} lines: {m}.{node.name} ({n})")
    print("\n".join(findings) if findings else f"{len(mods)} modules: no circle, none too long")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "src")))
