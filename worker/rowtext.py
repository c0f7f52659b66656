"""How a table row becomes the text the model embeds, and how long that text will be.

Default `col: value; col: value` (empty cells left out), a subset of the columns
(`text.columns`), or a template of plain `{column}` fields (`text.template`). Templates are
rendered here, never by `str.format`: a field is a column name and nothing else (`{0}` names a
column called "0", it is not a positional argument). `row_text_length` gives the length of
`row_text` without building it, so a job's cost is known before any text is made.
"""

from __future__ import annotations

import functools
import string
from collections import Counter

from worker.errors import JobError

Cell = str | int | float | bool | None
# A parsed template: (literal text, field name or None) pieces, as string.Formatter yields them.
Pieces = tuple[tuple[str, str | None], ...]


@functools.lru_cache(maxsize=256)
def _pieces(template: str) -> Pieces:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise JobError("invalid_template", f"text.template: {exc}") from None
    out: list[tuple[str, str | None]] = []
    for literal, name, spec, conv in parsed:
        if name is not None and (not name or any(ch in name for ch in ".[]") or spec or conv):
            raise JobError("invalid_template", "text.template fields must be plain {column} names")
        out.append((literal, name))
    return tuple(out)


def template_fields(template: str) -> list[str]:
    return [name for _, name in _pieces(template) if name is not None]


def row_text(
    columns: list[str],
    row: list[Cell],
    template: str | None = None,
    text_columns: list[str] | None = None,
) -> str:
    """Default `col: value; col: value` (empty cells left out), or the job's template."""
    values = dict(zip(columns, row, strict=False))
    if template is not None:
        return "".join(
            literal + (cell_text(values.get(name)) if name is not None else "")
            for literal, name in _pieces(template)
        )
    names = text_columns if text_columns is not None else columns
    return "; ".join(
        f"{name}: {cell_text(values.get(name))}" for name in names if _shown(values.get(name))
    )


def row_text_length(
    columns: list[str],
    row: list[Cell],
    template: str | None = None,
    text_columns: list[str] | None = None,
) -> int:
    """`len(row_text(...))`, computed from the cells without building the text.

    A template or `text.columns` may name one column thousands of times: the text is then
    thousands of times the cell, which is what this measures before anything is allocated.
    """
    values = dict(zip(columns, row, strict=False))
    if template is not None:
        pieces = _pieces(template)
        literals = sum(len(literal) for literal, _ in pieces)
        uses = _uses(tuple(name for _, name in pieces if name is not None))
        return literals + sum(n * len(cell_text(values.get(name))) for name, n in uses.items())
    names = text_columns if text_columns is not None else columns
    total = shown = 0
    for name, n in _uses(tuple(names)).items():
        value = values.get(name)
        if _shown(value):
            total += n * (len(name) + 2 + len(cell_text(value)))
            shown += n
    return total + 2 * max(shown - 1, 0)


@functools.lru_cache(maxsize=256)
def _uses(names: tuple[str, ...]) -> Counter[str]:
    return Counter(names)


def _shown(value: Cell) -> bool:
    return value is not None and value != ""


def cell_text(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)
