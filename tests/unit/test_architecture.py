"""The package's rooms (docs/architecture.md): imports point down the layers, modules import no circle, and no room
outgrows itself. Read from the source with `ast`, so the checks see what a reader sees."""

import ast
import pathlib
from collections import defaultdict

import pytest

import rft_trl

PACKAGE = pathlib.Path(rft_trl.__file__).parent
# docs/architecture.md's diagram, bottom up: a package imports from lower layers only (within a layer, not at all).
LAYERS = {
    "core": 0,
    "plotting": 0,
    "data": 1,
    "models": 2,
    "rollout": 3,
    "rewards": 3,
    "trainers": 4,
    "compat": 5,
    "testing": 6,
    "scripts": 7,
    "cli": 8,
}
# The seed's module paths (`lightrft.models.actor_vl`, ...) kept as modules that only re-export `compat`'s names:
# nothing in the package imports them (checked below), so their arrow up leads nowhere.
SEED_PATH_MODULES = {"models/actor_al.py", "models/actor_vl.py", "models/loss.py", "trainers/replay_buffer_utils.py"}
MAX_MODULE_LINES = 700
MAX_TRAINER_CLASS_LINES = 600


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path, root: pathlib.Path):
    """`(target module, line, where)` for each import of the package in `path`; `where` is `"module"`, `"function"`
    (inside a function: run when called) or `"typing"` (under `if TYPE_CHECKING:`, never run)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]

    def visit(node, where, function):
        for child in ast.iter_child_nodes(node):
            here, inside = where, function
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                here = "typing"
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                here, inside = ("function" if where == "module" else where), child.name
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                # `from .. import compat` imports a module by name: the target is that module.
                targets = [f"{target}.{alias.name}" for alias in child.names] if not child.module else [target]
                for target in targets:
                    yield target, child.lineno, here, inside
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, child.lineno, here, inside
            yield from visit(child, here, inside)

    for target, line, where, function in visit(ast.parse(path.read_text()), "module", None):
        if target == root.name or target.startswith(f"{root.name}."):
            yield target, line, where, function


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_arrows(root: pathlib.Path) -> list[str]:
    """Imports from a room to one above or beside it. The seed's faces are the one kind allowed: `__getattr__`
    looking a name up in `compat` on first use, and the seed's module paths that only re-export `compat`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).as_posix() in SEED_PATH_MODULES:
            continue
        source = room(module_name(path, root))
        for target, line, where, function in imports(path, root):
            destination = room(target)
            if not source or not destination or source == destination or where == "typing":
                continue
            if destination == "compat" and function == "__getattr__":
                continue
            if LAYERS[destination] >= LAYERS[source]:
                found.append(f"{path.relative_to(root.parent)}:{line} ({source} -> {destination})")
    return found


def import_cycles(root: pathlib.Path) -> list[list[str]]:
    """Circles of module-level imports between modules (Tarjan's strongly connected components)."""
    graph = defaultdict(set)
    modules = {module_name(path, root): path for path in root.rglob("*.py")}
    for name, path in modules.items():
        for target, _, where, _ in imports(path, root):
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]  # `from .x import name`: the module is x
            if where == "module" and target != name and target in modules:
                graph[name].add(target)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def connect(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            # A package's __init__ importing its own modules is how Python packages work, not a circle.
            members = [m for m in component if not any(m.startswith(f"{c}.") for c in component if c != m)]
            if len(component) > 1 and len(members) > 1:
                cycles.append(sorted(component))

    for node in list(modules):
        if node not in index:
            connect(node)
    return cycles


def test_imports_point_down_the_layers():
    assert upward_arrows(PACKAGE) == []


def test_nothing_imports_the_seed_path_modules():
    seed_paths = {module_name(PACKAGE / path, PACKAGE) for path in SEED_PATH_MODULES}
    importers = [
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in PACKAGE.rglob("*.py")
        for target, line, _, _ in imports(path, PACKAGE)
        if target in seed_paths or any(target.startswith(f"{seed}.") for seed in seed_paths)
    ]
    assert importers == []


def test_modules_import_no_circle():
    assert import_cycles(PACKAGE) == []


def test_the_checks_see_an_upward_arrow_and_a_circle(tmp_path):
    # Control: a small package with one arrow up (core -> trainers) and a circle (trainers.a <-> trainers.b).
    root = tmp_path / "rft_trl"
    for folder in ("core", "trainers"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "core" / "math.py").write_text("from ..trainers import a\n")
    (root / "trainers" / "a.py").write_text("from .b import thing\n")
    (root / "trainers" / "b.py").write_text("from .a import other\n\n\ndef f():\n    from ..core import math\n")
    assert upward_arrows(root) == ["rft_trl/core/math.py:1 (core -> trainers)"]
    assert import_cycles(root) == [["rft_trl.trainers.a", "rft_trl.trainers.b"]]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_outgrows_its_room(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines: split it by what changes together"


def test_the_trainer_keeps_hooks_not_everything():
    tree = ast.parse((PACKAGE / "trainers" / "ppo_trainer_vl.py").read_text())
    (trainer,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "PPOTrainerVL"]
    lines = trainer.end_lineno - trainer.lineno + 1
    assert lines < MAX_TRAINER_CLASS_LINES, f"PPOTrainerVL has {lines} lines"
