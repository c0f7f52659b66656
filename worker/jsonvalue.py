"""JSON from untrusted bytes: parsed exactly, refused with a contract code, described safely.

orjson is fast but turns an integer beyond 64 bits into a float, so a cell `123456789012345678901`
would become the text `1.2345678901234568e+20`. Documents with such a digit run are parsed again
by the standard library, which keeps integers exact (up to `MAX_INT_DIGITS` digits; a longer
integer is refused). `describe` renders any value for an error message in
bounded size and depth: a 1,000-level array or a 9 MB string named in a message must not cost a
RecursionError or a 9 MB message.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from typing import Any

import orjson

from worker.errors import JobError

# Integers of up to 19 digits fit in 64 bits; orjson keeps those exact.
_LONG_DIGITS = re.compile(rb"\d{20,}")
# Longer integers are kept exact up to here; orjson cannot even read one over ~309 digits.
MAX_INT_DIGITS = 300
_describe = reprlib.Repr()
_describe.maxlevel, _describe.maxstring, _describe.maxother = 3, 60, 60
_describe.maxlist = _describe.maxdict = _describe.maxtuple = 4


def parse(data: bytes | str) -> Any:
    """One JSON value; raises JobError `invalid_json`, `non_finite_number` or `invalid_field`."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _refusal(raw, str(exc)) from None
    if _LONG_DIGITS.search(raw) is None:
        return value
    return _parse_exact(raw.decode())  # orjson accepted it: valid UTF-8, no lone surrogates


def _parse_exact(text: str) -> Any:
    """The standard library's parse, for integers orjson would have rounded to floats."""
    try:
        return json.loads(text, parse_int=_int)
    except RecursionError:
        raise JobError("invalid_json", "JSON nested too deeply") from None


def _refusal(raw: bytes, reason: str) -> JobError:
    """Why orjson refused the bytes, in the contract's terms."""
    if _has_non_finite(raw):
        return JobError("non_finite_number", "NaN and Infinity are not allowed in a job")
    if _LONG_DIGITS.search(raw) is not None:
        try:  # an integer too long even for a float? (the stdlib reads it, digit-checked)
            _parse_exact(raw.decode("utf-8", errors="strict"))
        except JobError as exc:
            if exc.code == "invalid_field":
                return exc
        except ValueError:
            pass
    return JobError("invalid_json", f"not valid JSON: {reason}")


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise JobError(
            "invalid_field", f"an integer has {digits} digits; the limit is {MAX_INT_DIGITS}"
        )
    return int(text)


def _has_non_finite(data: bytes | str) -> bool:
    """orjson rejects NaN/Infinity outright; tell the user that is what was wrong."""
    found = False

    def constant(_: str) -> float:
        nonlocal found
        found = True
        return 0.0

    def number(text: str) -> float:
        nonlocal found
        value = float(text)
        found = found or math.isinf(value)
        return value

    try:
        json.loads(data, parse_constant=constant, parse_float=number)
    except (ValueError, RecursionError):
        return False
    return found


def describe(value: Any) -> str:
    """A short, bounded repr of any parsed JSON value, for error messages."""
    return _describe.repr(value)


def kind(value: Any) -> str:
    """'an array', 'a string', ... for messages about a value of the wrong type."""
    return {
        list: "an array", dict: "an object", str: "a string", bool: "a boolean",
        type(None): "null",
    }.get(type(value), "a number")  # fmt: skip
