"""The README's configuration table is `worker.settings.env_table()`, row for row.

When a setting is added or changed, regenerate the table and paste it between the markers:

    python -c 'from tests.test_readme import render; print(render())'
"""

from __future__ import annotations

import re
from pathlib import Path

from worker.settings import env_table

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- env-table:start -->", "<!-- env-table:end -->"
HEADER = "| Variable | Default | Meaning |\n| --- | --- | --- |"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    """The table as it belongs in the README."""
    rows = [
        f"| `{name}` | {f'`{default}`' if default else ''} | {_cell(doc)} |"
        for name, default, doc in env_table()
    ]
    return "\n".join([HEADER, *rows])


def readme_table() -> str:
    text = README.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1, "README lacks the table markers"
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def _parsed(table: str) -> dict[str, str]:
    """{variable: default} from the table's rows."""
    found = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        found[cells[0].strip("`")] = cells[1].strip("`")
    return found


def test_every_variable_and_default_is_in_the_readme() -> None:
    expected = {name: default for name, default, _ in env_table()}
    documented = _parsed(readme_table())
    assert sorted(set(expected) - set(documented)) == [], "variables missing from the README"
    assert sorted(set(documented) - set(expected)) == [], "README lists unknown variables"
    wrong = {k: (documented[k], v) for k, v in expected.items() if documented[k] != v}
    assert wrong == {}, "README defaults differ (README, settings)"


def test_readme_table_is_the_generated_one() -> None:
    assert readme_table() == render(), "regenerate the table:\n" + render()
