"""Which models the cache holds and where they come from: `name=source-uri` specifications.

TABULAR_SYNC_MODELS lists them for the sync (what to keep in the cache) and for the worker (where
a configured name resolves on a cache miss). Sources are hf://org/name[@revision],
ollama://name[:tag] and file://PATH; this module knows their syntax, `sync.sources` fetches them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_SPEC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
SCHEMES = ("hf", "ollama", "file")
# Files of a hub repository a sentence-transformers model does not need (other frameworks'
# weights and exports): neither the sync nor a worker downloading on a miss fetches them.
HF_IGNORE = [
    "*.h5", "*.ot", "*.msgpack", "*.onnx", "onnx/*", "openvino/*", "tf_model*", "flax_model*",
    "rust_model*", "*.tflite", "coreml/*", ".gitattributes",
]  # fmt: skip


class SpecError(ValueError):
    """A `name=source-uri` model specification, or a source URI, that cannot be used."""


@dataclass(frozen=True)
class SourceUri:
    """A parsed source URI: `scheme` and its parts (repo and revision, model tag, or path)."""

    uri: str
    scheme: str
    target: str  # org/name (hf), name:tag (ollama), absolute path (file)
    revision: str = ""  # hf only; "main" when not given

    @property
    def path(self) -> Path:
        return Path(self.target)


def parse_uri(uri: str) -> SourceUri:
    scheme, sep, rest = uri.partition("://")
    if not sep or not rest:
        raise SpecError(f"{uri!r} is not a source URI (hf://, ollama://, file://)")
    if scheme == "file":
        return SourceUri(uri, scheme, str(Path(rest).expanduser().absolute()))
    if scheme == "hf":
        repo, _, revision = rest.partition("@")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise SpecError(f"{uri!r}: expected hf://org/name[@revision]")
        return SourceUri(uri, scheme, repo, revision or "main")
    if scheme == "ollama":
        tagged = rest if ":" in rest.rsplit("/", 1)[-1] else f"{rest}:latest"
        return SourceUri(uri, scheme, tagged)
    raise SpecError(f"{uri!r}: unknown scheme {scheme!r} (hf, ollama, file)")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        name, sep, source = text.strip().partition("=")
        name, source = name.strip(), source.strip()
        if not sep or not _SPEC_NAME.match(name) or not source:
            raise SpecError(f"{text!r}: expected name=source-uri, name of [A-Za-z0-9._:-]")
        parse_uri(source)
        return cls(name, source)


def parse_specs(text: str) -> list[ModelSpec]:
    """TABULAR_SYNC_MODELS: comma-separated name=source-uri."""
    specs = [ModelSpec.parse(part) for part in text.split(",") if part.strip()]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SpecError(f"a model name is configured twice: {names}")
    return specs


def configured_source(specs_text: str, name: str) -> str:
    """The source URI TABULAR_SYNC_MODELS gives `name` ("" when none); raises SpecError."""
    return next((s.source for s in parse_specs(specs_text) if s.name == name), "")
