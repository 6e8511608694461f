"""The layering, read from the code's own imports: no module imports from a layer above its own.

`LAYERS` is the one statement of the order, top first. A package may import itself and any layer
below it; two packages on one layer never import each other (`fal` knows fal and nothing of jobs,
`jobs` knows the store and nothing of fal; the use cases are where both meet). Every import
counts, those inside a function or under `TYPE_CHECKING` too: each is a dependency all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parent.parent / "service"

LAYERS: tuple[tuple[str, ...], ...] = (
    # service.testing: helpers tests/ and bench/ share; nothing in the service imports it.
    ("service.__main__", "service.testing"),
    ("service.app", "service.cli", "service.client"),
    ("service.resources",),
    ("service.http", "service.emulator"),
    ("service.usecases",),
    ("service.uploads",),
    ("service.outputs",),
    ("service.realtime",),
    ("service.fal", "service.jobs"),
    ("service.db", "service.auth", "service.serving"),
    ("service.settings", "service.errors", "service.logging", "service.metrics"),
)


def _package(module: str) -> tuple[int, str] | None:
    """The layer (0 at the top) and the package of LAYERS a module belongs to."""
    for level, packages in enumerate(LAYERS):
        for package in packages:
            if module == package or module.startswith(package + "."):
                return level, package
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(SERVICE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = SERVICE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) for each service module a file imports, relative imports resolved."""
    module = _module_name(path)
    here = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from service import metrics` names a module; `from service.jobs.models import Job` a name in one.
            found += [(node.lineno, f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
                      for alias in node.names]
    return sorted({(line, name) for line, name in found if name == "service" or name.startswith("service.")})


def layer_violations() -> list[str]:
    problems: list[str] = []
    for path in sorted(SERVICE.rglob("*.py")):
        module = _module_name(path)
        if module == "service":
            continue
        own = _package(module)
        if own is None:
            problems.append(f"{module}: in no layer; add its package to LAYERS in tests/test_layers.py")
            continue
        for line, imported in _imported(path):
            target = _package(imported)
            if target is None or target[1] == own[1]:
                continue
            if target[0] < own[0]:
                problems.append(f"{module}:{line} imports {imported}, a higher layer ({target[1]} above {own[1]})")
            elif target[0] == own[0]:
                problems.append(f"{module}:{line} imports {imported}, a package on its own layer ({target[1]})")
    return problems


def test_no_module_imports_from_a_higher_layer_or_a_peer() -> None:
    assert layer_violations() == []


def test_the_check_reads_every_kind_of_import() -> None:
    """The walk sees the imports it exists for (a check that finds nothing must not pass by accident)."""
    follower = SERVICE / "usecases" / "follow_jobs.py"
    imported = {name for _, name in _imported(follower)}
    assert {"service.metrics", "service.fal.gateway", "service.jobs.status_machine"} <= imported
    emulator = {name for _, name in _imported(SERVICE / "emulator" / "outputs.py")}
    assert "service.emulator.faults" in emulator  # `from .faults import ...`
