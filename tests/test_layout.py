"""The house rules of docs/architecture.md, checked on the source: each package imports only the
floors below it, no import cycles, no private name imported across modules, no module over ~500 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dalle_pytorch"

#: the floors of docs/architecture.md; a module may import its own package and the floors below
FLOORS = {
    "errors": 0, "version": 0,
    "nn": 1, "formats": 1, "distributed": 1, "synthetic": 1,
    "text": 2, "generation": 2,
    "models": 3,
    "checkpoint": 4,
    "pipeline": 5,
    "serve": 6, "train": 6,
    "cli": 7,
    # the package's front door and the documented former paths: they re-export, nothing imports them
    "__init__": 8, "tokenizer": 8, "io": 8,
    # DALLE-pytorch 1.6.6's module paths (docs/migrating.md): the compat area, and its paths at the root
    "compat": 8, "dalle_pytorch": 9, "vae": 9, "loader": 9, "distributed_utils": 9, "transformer": 9, "attention": 9,
    "reversible": 9,
}
#: modules that are entry points, never imported (python -m ...)
ENTRY_POINTS = {"dalle_pytorch.serve.__main__"}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _room(module: str) -> str:
    """The top-level package or module of `dalle_pytorch.<room>...` ('__init__' for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) of every import in the file, at any depth (function-level too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("dalle_pytorch")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("dalle_pytorch"):
                names = [a.name for a in node.names]
                # `from dalle_pytorch.pkg import module` imports the module
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
                found += [(s, [], node.lineno) for s in subs] or [(target, names, node.lineno)]
    return found


def test_every_room_has_a_floor():
    rooms = {_room(m) for m in MODULES}
    assert rooms <= set(FLOORS), f"add these to FLOORS and to docs/architecture.md: {sorted(rooms - set(FLOORS))}"


def test_each_package_imports_only_the_floors_below_it():
    wrong = []
    for module, path in MODULES.items():
        if module in ENTRY_POINTS:
            continue
        room = _room(module)
        for target, _, line in _imports(module, path):
            other = _room(target)
            if other != room and FLOORS[other] >= FLOORS[room]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({room}, floor {FLOORS[room]}) imports "
                             f"{target} ({other}, floor {FLOORS[other]})")
    assert not wrong, "imports that run up or across the floors:\n" + "\n".join(wrong)


def test_no_import_cycles_between_modules():
    graph = {m: {t for t, _, _ in _imports(m, p) if t in MODULES and t != m} for m, p in MODULES.items()}
    # a package's __init__ that re-exports its modules is not a cycle with them
    for m in graph:
        graph[m] = {t for t in graph[m] if not (MODULES[t].name == "__init__.py" and m.startswith(t + "."))}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_name_is_imported_across_modules():
    wrong = [f"{p.relative_to(PACKAGE.parent)}:{line} imports {n} from {t}"
             for m, p in MODULES.items() for t, names, line in _imports(m, p) for n in names
             if n.startswith("_") and not n.startswith("__")]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module):
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: a module over {MAX_LINES} holds two concepts; split it"
