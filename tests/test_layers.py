"""Imports point one way: each package of emporion imports only from packages below it (read from
the source with ast, imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import emporion

# Lower first. A package may import from any package of a lower rank, never from its own rank or above.
RANKS = {
    "errors": 0,
    "settings": 0,
    "__version__": 0,
    "core": 1,
    "store": 2,
    "limits": 2,
    "formats": 2,
    "auth": 3,
    "catalog": 3,
    "providers": 4,
    "metering": 4,
    "engine": 5,  # the local engine serves through an upstream's wire (providers)
    "routing": 6,
    "pipeline": 7,
    "accounts": 7,
    "batches": 8,
    "observe": 8,  # stages on the request path: the request log, metrics  # the batch worker runs lines down the request path; the API creates batches
    "api": 9,
    "live": 9,
    "app": 10,
    "cli": 11,  # `emporion serve` starts the app
    "__main__": 12,
}
NEVER = {("cli", "api")}  # the CLI is the accounts service's caller beside the API, not the API's


def imports(path: Path) -> set[str]:
    """The emporion packages a module imports (``emporion.x.y`` -> ``x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.ImportFrom) and node.module == "emporion":
            names = [f"emporion.{alias.name}" for alias in node.names]
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {name.split(".")[1] for name in names if name.startswith("emporion.")}
    return found


def test_every_import_points_down():
    root = Path(emporion.__file__).parent
    wrong = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        package = relative.parts[0].removesuffix(".py")
        if package == "__init__":
            continue
        assert package in RANKS, f"{relative}: a new package; give it a rank in this test"
        for target in imports(path) - {package}:
            assert target in RANKS, f"{relative} imports emporion.{target}, which has no rank"
            if RANKS[target] >= RANKS[package] or (package, target) in NEVER:
                wrong.append(f"{relative} -> emporion.{target}")
    assert wrong == []
