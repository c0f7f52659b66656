"""How a table row becomes the text the model embeds.

Default `col: value; col: value` (empty cells left out), a subset of the columns
(`text.columns`), or a template of plain `{column}` fields (`text.template`).
"""

from __future__ import annotations

import string

from worker.errors import JobError

Cell = str | int | float | bool | None


def template_fields(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise JobError("invalid_template", f"text.template: {exc}") from None
    names = []
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if not name or any(ch in name for ch in ".[]") or spec or conv:
            raise JobError("invalid_template", "text.template fields must be plain {column} names")
        names.append(name)
    return names


def row_text(
    columns: list[str],
    row: list[Cell],
    template: str | None = None,
    text_columns: list[str] | None = None,
) -> str:
    """Default `col: value; col: value` (empty cells left out), or the job's template."""
    values = dict(zip(columns, row, strict=False))
    if template is not None:
        return template.format_map({k: _cell_text(v) for k, v in values.items()})
    names = text_columns if text_columns is not None else columns
    return "; ".join(
        f"{name}: {_cell_text(values.get(name))}"
        for name in names
        if values.get(name) is not None and values.get(name) != ""
    )


def _cell_text(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)
