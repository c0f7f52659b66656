"""Imports run one way (docs/architecture.md):

    base (shared base, cache format)  <-  engine (inference)  <-  worker
                                      <-                      <-  sync
    harness (test and bench servers)  <-  tests, bench

`sync` never imports `worker` and `worker` never imports `sync`; `base` imports no other package
of the project, `engine` only `base`; the programs import neither `harness`, `tests` nor `bench`;
`bench` and `harness` never import `tests`. Every import statement counts, including those
inside functions and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("base", "engine", "worker", "sync", "harness", "bench", "tests")
# package -> top-level packages of this project it must never import
FORBIDDEN = {
    "base": {"engine", "worker", "sync", "harness", "bench", "tests"},
    "engine": {"worker", "sync", "harness", "bench", "tests"},
    "worker": {"sync", "harness", "bench", "tests"},
    "sync": {"worker", "harness", "bench", "tests"},
    "harness": {"engine", "worker", "sync", "bench", "tests"},
    "bench": {"tests"},
    "tests": set(),
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) for every import statement in a source file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def violations(root: Path = ROOT) -> list[str]:
    """Every import that runs against the arrows above, as `file:line imports package`."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for target, line in sorted(imported_packages(path)):
                if target in FORBIDDEN[package]:
                    found.append(f"{path.relative_to(root)}:{line} imports {target}")
    return found


def test_imports_run_one_way() -> None:
    assert violations() == []


def test_harness_runs_without_the_programs() -> None:
    # harness starts the worker as a subprocess (`python -m worker serve`), never imports it
    assert "worker" not in {name for name, _ in imported_packages(ROOT / "harness/worker_proc.py")}


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        ("sync", "from worker.settings import Settings\n", "sync/m.py:1 imports worker"),
        ("worker", "def f():\n    from sync.run import x\n", "worker/m.py:2 imports sync"),
        ("base", "import worker.logs\n", "base/m.py:1 imports worker"),
        ("bench", "from tests.worker_proc import X\n", "bench/m.py:1 imports tests"),
    ],
)
def test_the_check_sees_a_wrong_import(
    tmp_path: Path, package: str, source: str, expected: str
) -> None:
    for name in PACKAGES:
        (tmp_path / name).mkdir()
    (tmp_path / package / "m.py").write_text(source)
    assert violations(tmp_path) == [expected]
