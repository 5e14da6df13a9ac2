"""jirl's packages depend one way (issue 22): a module imports only from its own layer or the
layers below it, function-local imports included, so the foundation can be read, tested and
reused without the studies above it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jirl"

# Lowest first. A module's layer is that of its top-level name under jirl/.
LAYERS = [
    {"config", "registry", "checks", "run_dir", "sharding"},  # no jirl imports but these
    {"models"},
    {"mdp"},
    {"train"},
    {"data", "rewards", "rl", "preference", "eval"},
    {"irl", "credit"},
    {"experiment", "cli"},
]
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}


def jirl_imports(path: Path) -> list[tuple[str, int]]:
    """``(top-level jirl name, line)`` of every ``import jirl.X`` / ``from jirl.X import`` /
    ``from jirl import X`` in a file, wherever it sits (function bodies included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "jirl":
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jirl."):
            found.append((node.module.split(".")[1], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name.split(".")[1], node.lineno) for alias in node.names if alias.name.startswith("jirl.")]
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "__init__.py")


def test_every_package_has_a_layer():
    names = {p.relative_to(PACKAGE).with_suffix("").parts[0] for p in MODULES}
    assert names <= set(LAYER), f"give {sorted(names - set(LAYER))} a layer in LAYERS"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_higher_layer(path):
    own = path.relative_to(PACKAGE).with_suffix("").parts[0]
    upward = [f"line {line}: jirl.{name}" for name, line in jirl_imports(path)
              if name in LAYER and LAYER[name] > LAYER[own]]
    assert not upward, f"jirl.{own} (layer {LAYER[own]}) imports from a higher layer: {upward}"


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from jirl.train.loop import fit\n    import jirl.irl.afd\n")
    assert jirl_imports(module) == [("train", 2), ("irl", 3)]
