"""JSON-lines logging on stderr in Cloud Logging's structured form.

Cloud Run forwards each stderr line that parses as JSON into `jsonPayload`, lifting `severity`
and `message`; everything else becomes a queryable field (`jsonPayload.cache_hit=true`).
stdout is left alone so `tabular-worker run` can stream results there.
"""

from __future__ import annotations

import datetime as _dt
import logging
import sys
from typing import Any

import orjson

_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelno, "DEFAULT"),
            "message": record.getMessage(),
            "time": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(),
            "logger": record.name,
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup(level: str = "INFO") -> None:
    """Route every logger (ours and libraries') through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    for noisy in ("urllib3", "httpx", "httpcore", "httpx2", "httpcore2", "filelock",
                  "huggingface_hub", "transformers"):  # fmt: skip
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    _silence_progress_bars()


def _silence_progress_bars() -> None:
    """tqdm bars from transformers/huggingface_hub would write non-JSON lines to stderr."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def get(name: str) -> logging.Logger:
    return logging.getLogger(name)
