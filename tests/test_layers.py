"""The layer contract: imports point down only (read from the source, every import, also inside functions).

Layers, bottom to top: the base of ``fl_split`` (codecs, data, models, config, metrics, checkpoints,
launching, ``training``: the model, data shards, batch order and optimizer every learner derives
from a config) → the learning packages ``fl_split.sl``, ``fl``, ``ddp``, ``gossip``, which never
import each other → ``fl_split.compare`` (SL against FL: it builds both) → ``strategies`` (Flower
server strategies) → ``simulations`` (apps, the ``fl-split`` CLI, benchmarks). A ``__main__.py``
is a script, the top of the graph by definition (nothing imports it): ``python -m fl_split.ddp``
runs the CLI from there.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fl_split", "strategies", "simulations")
#: The learning packages: above the base of fl_split, independent of each other.
LEARNING = ("fl_split.sl", "fl_split.fl", "fl_split.ddp", "fl_split.gossip")
#: Each unit's layer (a module's unit: the longest of these names it is or starts with).
LAYERS = {"fl_split": 0, **dict.fromkeys(LEARNING, 1), "fl_split.compare": 2, "strategies": 3, "simulations": 4}


def unit(module: str) -> str:
    """The unit of :data:`LAYERS` a module belongs to."""
    return max((u for u in LAYERS if module == u or module.startswith(u + ".")), key=len)


def layer(module: str) -> int:
    """The layer of a module's unit (:data:`LAYERS`)."""
    return LAYERS[unit(module)]


def imports(root: Path) -> list[tuple[str, str, str]]:
    """``(module, imported module, file:line)`` for every absolute import of the project's packages under ``root``."""
    found = []
    for top in PACKAGES:
        for path in sorted((root / top).rglob("*.py")):
            if path.name == "__main__.py":
                continue  # a script: nothing imports it
            parts = list(path.relative_to(root).with_suffix("").parts)
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
                found += [(module, n, where) for n in names if n.split(".")[0] in PACKAGES]
    return found


def violations(root: Path) -> list[str]:
    """Every import that points up a layer, or sideways from one learning package into another."""
    bad = []
    for module, target, where in imports(root):
        if layer(target) > layer(module):
            bad.append(f"{where}: {module} imports {target}, a higher layer")
        elif layer(module) == layer(target) == 1 and unit(module) != unit(target):
            bad.append(f"{where}: {module} imports {target}, another learning package")
    return bad


def test_every_import_points_down() -> None:
    assert violations(ROOT) == []


@pytest.mark.parametrize(
    ("file", "line", "expected"),
    [
        ("fl_split/codecs/x.py", "def f():\n    from simulations.cli import main\n", "a higher layer"),
        ("fl_split/sl/x.py", "import strategies.split_learning\n", "a higher layer"),
        ("strategies/x.py", "from simulations import sl\n", "a higher layer"),
        ("fl_split/sl/x.py", "from fl_split.gossip import run\n", "another learning package"),
        ("fl_split/x.py", "from fl_split.sl import setup\n", "a higher layer"),
        ("fl_split/fl/x.py", "from fl_split.compare import cells\n", "a higher layer"),
    ],
)
def test_the_contract_fails_on_a_deliberate_violation(tmp_path: Path, file: str, line: str, expected: str) -> None:
    for top in PACKAGES:
        (tmp_path / top).mkdir()
    target = tmp_path / file
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(line, encoding="utf-8")
    (bad,) = violations(tmp_path)
    assert bad.startswith(f"{file}:") and expected in bad
