"""The README's configuration tables are `base.env.env_table(...)`, row for row: one table of
the variables both programs read, one of the worker's, one of the sync's.

When a setting is added or changed, regenerate the tables and paste each between its markers:

    python -c 'from tests.test_readme import render_all; print(render_all())'
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from base.env import CommonSettings, env_table
from sync.settings import SyncSettings
from worker.settings import WorkerSettings

README = Path(__file__).resolve().parent.parent / "README.md"
HEADER = "| Variable | Default | Meaning |\n| --- | --- | --- |"
TABLES: dict[str, type[CommonSettings]] = {
    "common": CommonSettings,
    "worker": WorkerSettings,
    "sync": SyncSettings,
}


def _markers(table: str) -> tuple[str, str]:
    return f"<!-- env-table:{table}:start -->", f"<!-- env-table:{table}:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(table: str) -> str:
    """One table as it belongs in the README."""
    rows = [
        f"| `{name}` | {f'`{default}`' if default else ''} | {_cell(doc)} |"
        for name, default, doc in env_table(TABLES[table])
    ]
    return "\n".join([HEADER, *rows])


def render_all() -> str:
    return "\n\n".join(f"{_markers(t)[0]}\n{render(t)}\n{_markers(t)[1]}" for t in TABLES)


def readme_table(table: str) -> str:
    start, end = _markers(table)
    text = README.read_text(encoding="utf-8")
    assert text.count(start) == 1 and text.count(end) == 1, f"README lacks the {table} markers"
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def _parsed(table: str) -> dict[str, str]:
    """{variable: default} from the table's rows."""
    found = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        found[cells[0].strip("`")] = cells[1].strip("`")
    return found


@pytest.mark.parametrize("table", TABLES)
def test_every_variable_and_default_is_in_the_readme(table: str) -> None:
    expected = {name: default for name, default, _ in env_table(TABLES[table])}
    documented = _parsed(readme_table(table))
    assert sorted(set(expected) - set(documented)) == [], "variables missing from the README"
    assert sorted(set(documented) - set(expected)) == [], "README lists unknown variables"
    wrong = {k: (documented[k], v) for k, v in expected.items() if documented[k] != v}
    assert wrong == {}, "README defaults differ (README, settings)"


@pytest.mark.parametrize("table", TABLES)
def test_readme_table_is_the_generated_one(table: str) -> None:
    assert readme_table(table) == render(table), "regenerate the tables:\n" + render_all()


def test_no_variable_is_in_two_tables() -> None:
    seen: dict[str, str] = {}
    for table, cls in TABLES.items():
        for name, _, _ in env_table(cls):
            assert name not in seen, f"{name} is in the {seen[name]} and the {table} table"
            seen[name] = table
