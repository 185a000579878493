"""The rooms of the code import only what docs/architecture.md allows them to."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Room (a folder, or one file) -> the jjepa packages its modules may import.
ALLOWED: dict[str, tuple[str, ...]] = {
    "common": ("jjepa.common",),
    "preprocess": ("jjepa.common", "jjepa.preprocess"),
    "train/config.py": ("jjepa.common", "jjepa.train.data.transform"),
    "train/model": ("jjepa.common", "jjepa.train.config", "jjepa.train.data", "jjepa.train.model"),
    "train/mechanics": ("jjepa.common", "jjepa.train.config", "jjepa.train.mechanics"),
    "train/data": ("jjepa.common", "jjepa.train.config", "jjepa.train.data"),
    "train/report": ("jjepa.common", "jjepa.train.report"),
    "train/runners": ("jjepa.common", "jjepa.train"),
    "train/cli.py": ("jjepa.common", "jjepa.train.config", "jjepa.train.runners"),
}


def _room(path: Path) -> str:
    relative = path.relative_to(ROOT).as_posix()
    matches = [room for room in ALLOWED if relative == room or relative.startswith(room + "/")]
    return max(matches, key=len) if matches else ""


def _jjepa_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jjepa"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("jjepa"))
    return names


MODULES = sorted(p for folder in ("common", "preprocess", "train") for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_module_imports_only_what_its_room_allows(path):
    room = _room(path)
    if not room:  # train/__init__.py, train/__main__.py: entry points
        return
    allowed = ALLOWED[room]
    stray = sorted(n for n in _jjepa_imports(path) if not any(n == a or n.startswith(a + ".") for a in allowed))
    assert not stray, f"{room} may import {allowed}, but {path.name} imports {stray}"


def test_reporting_needs_no_torch():
    """Figures of merit and plots run from saved predictions, without the model's dependencies."""
    for path in (ROOT / "train" / "report").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert "torch" not in imported, path.name


def test_every_module_belongs_to_a_room():
    loose = [p.relative_to(ROOT).as_posix() for p in MODULES
             if not _room(p) and p.name not in ("__init__.py", "__main__.py")]
    assert not loose, f"modules outside the rooms of docs/architecture.md: {loose}"
