"""Typed settings read from environment variables, and the variables both programs share.

Each program declares its own frozen dataclass on top of `CommonSettings` with `setting(...)`
fields; `from_env` reads, parses and validates only that class's variables, so a variable the
program does not use can never stop it. Names the ops docs already use (MODEL_CACHE_PATH,
OLLAMA_HOST, PORT, ...) keep their names; the project's own take the TABULAR_ prefix. The README's
tables are generated from `env_table` (tests/test_readme.py checks they agree).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from base import logs

_S = TypeVar("_S", bound="CommonSettings")


class SettingsError(ValueError):
    """A variable is set to something this program cannot use."""


def setting(name: str, default: Any, doc: str) -> Any:
    """A settings field read from the environment variable `name`."""
    return field(default=default, metadata={"env": name, "doc": doc})


@dataclass(frozen=True)
class CommonSettings:
    """Variables both `tabular-worker` and `tabular-sync` read."""

    model_cache_path: str = setting(
        "MODEL_CACHE_PATH", "/models", "Root of the shared model cache (GCS FUSE mount)."
    )
    sync_models: str = setting(
        "TABULAR_SYNC_MODELS",
        "",
        "Models the sync keeps in the cache: comma-separated name=source-uri (hf://org/name[@rev],"
        " ollama://name:tag, file://PATH). The worker resolves these names on a cache miss too.",
    )
    ollama_host: str = setting("OLLAMA_HOST", "http://127.0.0.1:11434", "Ollama server address.")
    project: str = setting("GOOGLE_CLOUD_PROJECT", "", "Google Cloud project for short IDs.")
    pubsub_emulator_host: str = setting(
        "PUBSUB_EMULATOR_HOST", "", "host:port of a Pub/Sub emulator (tests, local runs)."
    )
    log_level: str = setting("TABULAR_LOG_LEVEL", "INFO", "Log level.")
    cache_read_timeout_seconds: float = setting(
        "TABULAR_CACHE_READ_TIMEOUT_SECONDS",
        30.0,
        "A cache read that makes no progress for this long ends as `read_timeout` (a hung FUSE "
        "read); files of the cache are also size-bounded and must be regular files.",
    )

    @classmethod
    def from_env(cls: type[_S], env: Mapping[str, str] | None = None, **overrides: Any) -> _S:
        """Read this class's variables from `env` (default: os.environ), then validate.

        Unset and empty variables take their defaults; `overrides` (field names) win over both.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _parse(f.metadata["env"], raw, f.default)
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Checks across fields; subclasses extend it (and call super)."""

    def replace(self: _S, **changes: Any) -> _S:
        """A validated copy with some fields changed."""
        copy = dataclasses.replace(self, **changes)
        copy.validate()
        return copy

    @classmethod
    def env_name(cls, field_name: str) -> str:
        """The variable a field is read from."""
        return str(next(f.metadata["env"] for f in dataclasses.fields(cls) if f.name == field_name))

    def require_positive(self, *field_names: str) -> None:
        for name in field_names:
            if getattr(self, name) < 1:
                raise SettingsError(f"{self.env_name(name)} must be >= 1")


def _parse(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {type(default).__name__}") from None
    return raw


def env_table(cls: type[CommonSettings], own: bool = True) -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for a settings class: the README tables are made from this.

    `own` leaves out the variables `CommonSettings` declares (they have a table of their own).
    """
    common = {f.name for f in dataclasses.fields(CommonSettings)} if own else set()
    return [
        (f.metadata["env"], str(f.default), f.metadata["doc"])
        for f in dataclasses.fields(cls)
        if f.name not in common or cls is CommonSettings
    ]


def inside(path: str, root: str) -> bool:
    """Whether `path` is `root` or lies under it (lexically, after making both absolute)."""
    child, parent = os.path.abspath(path), os.path.abspath(root)
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def load_settings(cls: type[_S]) -> _S | None:
    """Settings for a CLI command, with JSON logging set up either way.

    None means a variable is invalid: that has been logged (one JSON line) and the command
    should exit 2.
    """
    try:
        settings = cls.from_env()
    except SettingsError as exc:
        logs.setup()
        logs.get("settings").error(str(exc))
        return None
    logs.setup(settings.log_level)
    return settings
