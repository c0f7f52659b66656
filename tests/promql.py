"""A small PromQL metric-name extractor for the tests (not a parser).

`metric_names(expr)` returns the metric names an expression selects: identifiers that are not
functions, aggregation operators, keywords, label names (inside `{...}` matchers and
`by`/`without`/`on`/`ignoring`/`group_left`/`group_right` clauses), strings, numbers or
durations. `{__name__="x"}` selectors count as `x`. Grafana variables (`$__rate_interval`,
`${datasource}`) are ignored.
"""

from __future__ import annotations

import re

AGGREGATIONS = frozenset(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk "
    "limit_ratio".split()
)
KEYWORDS = frozenset(
    "and or unless by without on ignoring group_left group_right offset bool inf nan atan2 "
    "start end".split()
)
FUNCTIONS = frozenset(
    """abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes
    clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year
    days_in_month deg delta deriv double_exponential_smoothing exp floor histogram_avg
    histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
    histogram_sum holt_winters hour idelta increase info irate label_join label_replace
    last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi
    predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin
    sinh sort sort_by_label sort_by_label_desc sort_desc sqrt stddev_over_time stdvar_over_time
    sum_over_time tan tanh time timestamp vector year""".split()
)
RESERVED = AGGREGATIONS | KEYWORDS | FUNCTIONS

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*(?:"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\')')
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\]")
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_NUMBER = re.compile(r"(?<![\w:])\.?\d[\w.]*")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression."""
    names = {a or b for a, b in _NAME_MATCHER.findall(expr)}
    text = _GRAFANA_VAR.sub(" ", expr)
    text = _STRING.sub('""', text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _CLAUSE.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    for match in _IDENT.finditer(text):
        word = match.group()
        if word in RESERVED:
            continue
        if text[match.end() :].lstrip().startswith("("):
            raise ValueError(f"unknown PromQL function {word!r} in {expr!r}")
        names.add(word)
    return names
