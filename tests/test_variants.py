"""The variants record (base/cache/variants.py) in variants.json and in the manifest."""

from __future__ import annotations

import orjson
import pytest

from base.cache.manifest import FileEntry, Manifest, ManifestError, ModelEntry
from base.cache.variants import Variant, Variants, VariantsError, parse_variants, serving_files

FP32 = Variant("onnx-fp32", "onnx", "fp32", ("onnx/model.onnx", "onnx/model.onnx_data"), True,
               {"min_cosine": 0.9999999, "speedup": 1.3}, "fp32 export")  # fmt: skip
INT8 = Variant("onnx-int8", "onnx", "int8", ("onnx/int8.onnx",), False, {"spearman": 0.97})
RECORD = Variants(1, (FP32, INT8), reference="torch", calibration="c.jsonl", gate_rule="rule")
FILES = ["config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json",
         "onnx/model.onnx", "onnx/model.onnx_data", "onnx/int8.onnx", "onnx/tokenizer.json",
         "onnx/variants.json", "colbert_linear.pt"]  # fmt: skip


def entry(variants: Variants | None, files: list[str] = FILES) -> ModelEntry:
    listed = tuple(FileEntry(p, 1, "0" * 64) for p in files)
    return ModelEntry("m", "sbert", "file:///m", "r", "sbert/m/abc", listed, "", variants)


def test_round_trip_through_json_and_the_manifest() -> None:
    assert parse_variants(orjson.loads(RECORD.to_bytes())) == RECORD
    manifest = Manifest(3, "now", (entry(RECORD), entry(None)))
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest
    assert b'"variants"' in manifest.to_bytes()


def test_a_manifest_without_variants_still_reads() -> None:
    old = Manifest(1, "then", (entry(None),)).to_bytes()
    assert b'"variants":' not in old
    assert Manifest.from_bytes(old).models[0].variants is None


def test_variant_files_must_be_listed_and_checksummed() -> None:
    manifest = Manifest(3, "now", (entry(RECORD, [f for f in FILES if f != "onnx/int8.onnx"]),))
    with pytest.raises(ManifestError, match=r"onnx/int8\.onnx"):
        Manifest.from_bytes(manifest.to_bytes())


def bad(**change: object) -> dict[str, object]:
    good = {"name": "x", "backend": "onnx", "precision": "fp32", "files": ["a"], "passed": True}
    return {"export_version": 1, "variants": [{**good, **change}]}


@pytest.mark.parametrize(
    "raw",
    [
        {"export_version": "1", "variants": []},
        bad(backend="gpu"),
        bad(files=[]),
        bad(precision="int4"),
        bad(passed="yes"),
    ],
)
def test_malformed_records_are_refused(raw: object) -> None:
    with pytest.raises(VariantsError):
        parse_variants(raw)


def test_a_worker_copies_only_what_its_backend_reads() -> None:
    fp32 = serving_files(FILES, FP32, RECORD.variants)
    assert fp32 == [
        "config.json", "tokenizer.json", "1_Pooling/config.json", "onnx/model.onnx",
        "onnx/model.onnx_data", "onnx/tokenizer.json", "onnx/variants.json",
    ]  # fmt: skip
    assert "onnx/int8.onnx" in serving_files(FILES, INT8, RECORD.variants)
    assert "onnx/model.onnx" not in serving_files(FILES, INT8, RECORD.variants)
    torch = serving_files(FILES, None, RECORD.variants)
    assert "model.safetensors" in torch and not any(p.startswith("onnx/") for p in torch)
