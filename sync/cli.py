"""`tabular-sync`: keep the shared model cache filled, committed and checkable.

once     refresh every configured model (exit 0 when the cache is current, 1 on failure)
listen   one sync per refresh event from TABULAR_REFRESH_SUBSCRIPTION
verify   full check of a cache against its manifest (exit 1 and list every problem)
export   ONNX variants of one model directory outside a cache, gated (prints the figures)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from base import logs
from base.env import load_settings
from sync.settings import SyncSettings

if TYPE_CHECKING:
    from sync.run import SyncResult

log = logs.get("sync.cli")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache", help="cache root (default: MODEL_CACHE_PATH)")
    models = argparse.ArgumentParser(add_help=False)
    models.add_argument(
        "--model", action="append", default=[], metavar="NAME=URI",
        help="a model to keep (repeatable; default: TABULAR_SYNC_MODELS)",
    )  # fmt: skip
    parser = argparse.ArgumentParser(
        prog="tabular-sync", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    once = sub.add_parser("once", parents=[common, models], help="run one sync")
    once.add_argument("--only", action="append", metavar="NAME", help="refresh only these")
    once.add_argument("--force", action="store_true",
                      help="refetch and rewrite even what looks unchanged")  # fmt: skip
    sub.add_parser("listen", parents=[common, models], help="sync on each refresh event")
    sub.add_parser("verify", parents=[common], help="check every file against the manifest")
    export = sub.add_parser("export", help="write a model's ONNX variants (outside a cache)")
    export.add_argument(
        "--model", required=True, metavar="PATH_OR_NAME",
        help="a model directory, or all-MiniLM-L6-v2 (the packaged model)",
    )  # fmt: skip
    export.add_argument(
        "--out", required=True, metavar="DIR",
        help="the model directory to write: a copy of the model plus onnx/",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load_settings(SyncSettings)
    if settings is None:
        return 2
    if args.command == "export":
        return _export(args.model, Path(args.out))
    root = Path(args.cache or settings.model_cache_path)
    if args.command == "verify":
        return _verify(root, settings.cache_read_timeout_seconds)
    from base.cache.specs import SpecError, parse_specs

    try:
        specs = parse_specs(",".join(args.model) if args.model else settings.sync_models)
    except SpecError as exc:
        log.error("Bad model specification", extra={"error": str(exc)})
        return 2
    if not specs:
        log.error("No models configured: set TABULAR_SYNC_MODELS or pass --model name=uri")
        return 2
    if args.command == "once":
        from sync.run import sync_once

        result = sync_once(root, specs, settings, only=args.only, force=args.force)
        push_metrics(root, result, settings)
        return 0 if result.ok else 1
    from sync.listen import listen

    return listen(root, specs, settings)


def push_metrics(root: Path, result: SyncResult, settings: SyncSettings) -> bool:
    """Push one run's metrics to TABULAR_PUSHGATEWAY_URL (replacing the `tabular-sync` group).

    A push that fails is logged and does not change the exit code: the sync itself is recorded
    in sync-status.json, which workers export too.
    """
    from prometheus_client import CollectorRegistry

    from base.cache.status import cache_status
    from sync.metrics import SyncMetrics

    # A registry of its own: a finished process's process_*/python_* series mean nothing there.
    metrics = SyncMetrics(CollectorRegistry(), quota_bytes=settings.cache_quota_bytes or None)
    metrics.count_run(result)
    metrics.set_status(cache_status(root))
    gateway = settings.pushgateway_url
    if not gateway:
        log.info("Sync metrics not pushed: TABULAR_PUSHGATEWAY_URL is not set")
        return False
    try:
        metrics.push(gateway, timeout=30)
    except Exception as exc:
        log.error("Could not push sync metrics", extra={"gateway": gateway, "error": repr(exc)})
        return False
    log.info("Sync metrics pushed", extra={"gateway": gateway, "outcome": result.outcome})
    return True


def _export(model: str, out: Path) -> int:
    from engine.config import UnsupportedModel
    from sync.variants import export_directory

    try:
        variants = export_directory(model, out)
    except (OSError, UnsupportedModel) as exc:
        log.error("Cannot export", extra={"model": model, "error": str(exc)})
        return 1
    print(f"{'variant':<20} {'passed':<7} {'mean cos':>9} {'min cos':>9} {'spearman':>9} "
          f"{'zero-shot':>9} {'few-shot':>9} {'speed-up':>9}")  # fmt: skip
    for v in variants.variants:
        g = v.gate
        print(f"{v.name:<20} {'yes' if v.passed else 'NO':<7} {g['mean_cosine']:>9.6f} "
              f"{g['min_cosine']:>9.6f} {g['spearman']:>9.6f} {g['zero_shot_agreement']:>9.4f} "
              f"{g['few_shot_agreement']:>9.4f} {g['speedup']:>8.2f}x")  # fmt: skip
    print(f"gate: {variants.gate_rule}\nwritten: {out}")
    return 0


def _verify(root: Path, timeout: float) -> int:
    from base.cache.manifest import read_cache, verify

    problems = verify(root, timeout=timeout)
    for problem in problems:
        print(problem, flush=True)
    state = read_cache(root, retry_delay=0, timeout=timeout)
    log.info("Cache verified", extra={"cache": str(root), "problems": len(problems),
             "generation": state.generation, "reason": state.reason})  # fmt: skip
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
