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


#: Every module of a room (train/__init__.py and train/__main__.py, entry points, belong to none).
MODULES = sorted(p for folder in ("common", "preprocess", "train") for p in (ROOT / folder).rglob("*.py") if _room(p))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_module_imports_only_what_its_room_allows(path):
    room = _room(path)
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


# --- DVC stages depend on the code they run ------------------------------------------------------------

#: Import name prefix -> folder of the repository (pyproject's package-dir).
PACKAGE_DIRS = {"jjepa.common": "common", "jjepa.preprocess": "preprocess", "jjepa.train": "train"}


def _module_path(name: str) -> Path | None:
    """The file of the jjepa module or package ``name``, or None if it is not one (e.g. a class name)."""
    for prefix, folder in PACKAGE_DIRS.items():
        if name == prefix or name.startswith(prefix + "."):
            base = ROOT / folder / Path(*name[len(prefix) + 1:].split(".")) if name != prefix else ROOT / folder
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    return candidate
    return None


def _imported_files(path: Path) -> set[Path]:
    """The jjepa files ``path`` imports anywhere in it (function-level imports too)."""
    files = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jjepa"):
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("jjepa")]
        files.update(f for f in map(_module_path, names) if f is not None)
    return files


def _closure(start: Path) -> set[Path]:
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(_imported_files(path))
    return seen


def _train_stages() -> list[tuple[str, str, list[str]]]:
    """(stage, jjepa-train command, deps) of every stage of dvc.yaml that runs ``jjepa-train``."""
    import yaml

    stages = []
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        words = body["cmd"].split()
        if "jjepa-train" in words:
            stages.append((name, words[words.index("jjepa-train") + 1], body["deps"]))
    return stages


def test_dependency_closure_follows_function_level_imports():
    """A function-level import (``cli.py`` imports its runners lazily) counts: the closure would miss code
    otherwise."""
    assert ROOT / "train" / "runners" / "pretrain.py" in _closure(ROOT / "train" / "cli.py")
    assert ROOT / "train" / "model" / "predictor.py" in _closure(ROOT / "train" / "runners" / "pretrain.py")


@pytest.mark.parametrize("stage, command, deps", _train_stages(), ids=lambda v: v if isinstance(v, str) else "")
def test_dvc_stage_depends_on_every_module_its_runner_imports(stage, command, deps):
    """Editing any module a stage's runner imports must re-run the stage (and nothing else should): the
    runner of ``jjepa-train <command>`` is ``train/runners/<command>.py``."""
    runner = ROOT / "train" / "runners" / f"{command}.py"
    assert runner.is_file(), f"stage {stage}: no runner {runner.name} for `jjepa-train {command}`"
    covered = [ROOT / d for d in deps]
    missing = sorted(p.relative_to(ROOT).as_posix() for p in _closure(runner)
                     if p.name != "__init__.py" and not any(p == d or d in p.parents for d in covered))
    assert not missing, f"dvc.yaml stage {stage} runs code it does not depend on: add {missing} to its deps"
