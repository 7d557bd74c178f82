"""The package's layers only point down, and nothing imports in a circle.

Every module of ``src/m2gate`` belongs to one layer (by its folder, or its
own name for top-level modules). A module may import from its own layer's
package and from lower layers, never from a higher one; ``TYPE_CHECKING``
imports count, because a cycle hidden behind them is still a cycle in the
design. docs/architecture.md explains the layers; keep both in step.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Lowest first. The root package (``m2gate``: only ``__version__``) is below everything.
LAYERS: dict[str, int] = {
    "m2gate": 0,
    "m2gate.protocol": 1,  # sans-IO codecs and framing: no sockets, no threads
    "m2gate.transports": 1,  # sockets behind small typed interfaces, beside the core
    "m2gate.loading": 1,  # finding and importing the user's app
    "m2gate.testing": 1,  # the Mongrel2 harness: imports nothing of ours
    "m2gate.conn": 2,  # one client connection: state, writers, uploads (no sockets)
    "m2gate.handler": 2,  # the public handler API (protocol only)
    "m2gate.adapters": 3,  # WSGI and ASGI, over conn/ and protocol/
    "m2gate.config": 4,  # settings declared once, file loader, docs
    "m2gate.logs": 5,
    "m2gate.runtime": 6,  # threaded, gevent and asyncio runtimes; one process
    "m2gate.ops": 6,  # pidfile, control and stats servers, OS confinement
    "m2gate.supervisor": 7,  # the master, worker processes, hand-off
    "m2gate.cli": 8,  # argument parsing and dispatch; status/stop/reload (cli.control)
    "m2gate.__main__": 9,
}


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted((SRC / "m2gate").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def layer_of(module: str) -> tuple[str, int]:
    """The layer key and rank of ``module`` (the longest matching prefix)."""
    best = ""
    for key in LAYERS:
        if (module == key or module.startswith(key + ".")) and len(key) > len(best):
            best = key
    assert best, "module %s is in no layer: add it to LAYERS and docs/architecture.md" % module
    return best, LAYERS[best]


def imports_of(module: str, path: Path) -> set[str]:
    """Every m2gate module ``module`` imports, ``TYPE_CHECKING`` and function bodies included."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "m2gate")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "m2gate":
                continue
            for alias in node.names:  # ``from m2gate.x import y`` may name a module y
                sub = "%s.%s" % (base, alias.name)
                found.add(sub if _is_module(sub) else base)
    found.discard(module)
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC / rel).with_suffix(".py").exists() or (SRC / rel / "__init__.py").exists()


GRAPH = {name: imports_of(name, path) for name, path in modules()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module: str) -> None:
    key, rank = layer_of(module)
    for dep in sorted(GRAPH[module]):
        dep_key, dep_rank = layer_of(dep)
        if dep_key == key:
            continue  # inside one layer's package; cycles are checked below
        assert dep_rank < rank, "%s (layer %s=%d) imports %s (layer %s=%d)" % (
            module,
            key,
            rank,
            dep,
            dep_key,
            dep_rank,
        )


def test_no_import_cycles() -> None:
    """Depth-first search over the whole graph, ``TYPE_CHECKING`` edges included."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(GRAPH.get(node, ())):
            if dep not in GRAPH:
                continue  # a package's __init__ that holds nothing
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)


def test_the_checker_sees_a_wrong_way_import(tmp_path: Path) -> None:
    """The test can fail: a protocol module importing a runtime is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from m2gate.runtime.threaded import ThreadedRuntime\n")
    deps = imports_of("m2gate.protocol.bad", bad)
    assert deps == {"m2gate.runtime.threaded"}
    assert layer_of("m2gate.runtime.threaded")[1] > layer_of("m2gate.protocol.bad")[1]
