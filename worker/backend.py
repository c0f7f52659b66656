"""Which inference backend and precision serve a model: TABULAR_INFERENCE_BACKEND / _PRECISION.

`auto` (the default) serves the fastest ONNX variant that passed the quality gate (by the speed-up
over torch measured at export; int8 before fp32 when none was measured) when onnxruntime is
installed, and the torch model otherwise. Asking for something that
cannot be had is an error at start naming the variable (exit 2), never a silent fallback. A variant
that failed the gate is served only when both variables name it, with a warning.
"""

from __future__ import annotations

import importlib.util

from base import logs
from base.cache.variants import Variant, Variants

log = logs.get(__name__)
BACKENDS = ("auto", "onnx", "torch")
PRECISIONS = ("auto", "fp32", "int8")
# Without a measured speed-up, int8 first: on CPU it does about twice the work per cycle of fp32.
_PREFERENCE = ("int8", "fp32")


class BackendUnavailable(RuntimeError):
    """The configured backend or precision cannot serve this model here (exit 2)."""


def installed(module: str) -> bool:
    """Whether `module` can be found, without importing it (torch takes seconds to import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def choose(variants: Variants | None, backend: str, precision: str) -> Variant | None:
    """The ONNX variant to serve, or None for the torch model."""
    if backend == "torch":
        if precision == "int8":
            raise BackendUnavailable(
                "TABULAR_INFERENCE_PRECISION=int8 needs ONNX: set TABULAR_INFERENCE_BACKEND=onnx "
                "or auto (torch serves fp32 only)"
            )
        _torch("TABULAR_INFERENCE_BACKEND=torch")
        return None
    onnx = [v for v in (variants.variants if variants else ()) if v.backend == "onnx"]
    wanted = [v for v in onnx if precision in ("auto", v.precision)]
    if backend == "auto" and precision == "auto":
        passed = [v for v in wanted if v.passed]
        if passed and installed("onnxruntime"):
            return _fastest(passed)
        why = (
            "no ONNX variant passed the quality gate"
            if installed("onnxruntime")
            else ("onnxruntime is not installed")
        )
        _torch(f"TABULAR_INFERENCE_BACKEND=auto: {why}")
        return None
    if not installed("onnxruntime"):
        raise BackendUnavailable(_asked(backend, precision) + ", but onnxruntime is not installed")
    if not wanted:
        raise BackendUnavailable(
            _asked(backend, precision) + ", but the model has no such ONNX variant "
            "(export one with `tabular-sync export`, or let the sync do it)"
        )
    passed = [v for v in wanted if v.passed]
    if passed:
        return _fastest(passed)
    if precision == "auto":
        raise BackendUnavailable(
            _asked(backend, precision) + ": no ONNX variant of the model passed the quality gate "
            "(TABULAR_INFERENCE_PRECISION=fp32|int8 serves one anyway)"
        )
    chosen = _fastest(wanted)
    log.warning("Serving an ONNX variant that failed the quality gate",
                extra={"variant": chosen.name, "gate": chosen.gate})  # fmt: skip
    return chosen


def _fastest(variants: list[Variant]) -> Variant:
    return max(
        variants, key=lambda v: (v.gate.get("speedup", 0.0), -_PREFERENCE.index(v.precision))
    )


def _torch(why: str) -> None:
    if not installed("torch") or not installed("sentence_transformers"):
        raise BackendUnavailable(
            f"{why}, and torch/sentence-transformers are not installed (a torch-free image "
            "serves exported models only: run `tabular-sync` or `tabular-sync export` first)"
        )


def _asked(backend: str, precision: str) -> str:
    return f"TABULAR_INFERENCE_BACKEND={backend} with TABULAR_INFERENCE_PRECISION={precision}"
