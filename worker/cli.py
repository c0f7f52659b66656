"""`tabular-worker`: run (local, no cloud), serve (Pub/Sub), submit (jobs in, results back)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import BinaryIO

from worker import logs
from worker.settings import Settings, SettingsError

log = logs.get("worker.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tabular-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="process job lines from a file or stdin; results to stdout")
    run.add_argument("--input", required=True, help="JSON-lines job file, or - for stdin")
    run.add_argument("--output", help="write results here instead of stdout")
    run.add_argument("--concurrency", type=int, default=0, help="jobs in flight (default: "
                     "TABULAR_MAX_IN_FLIGHT_JOBS)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        logs.setup()
        log.error(str(exc))
        return 2
    logs.setup(settings.log_level)
    if args.command == "run":
        return _run(settings, args)
    raise AssertionError(args.command)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from worker import local

    concurrency = args.concurrency or settings.max_in_flight_jobs
    output: BinaryIO
    if args.output:
        output = open(args.output, "wb")
    else:
        output = sys.stdout.buffer
    from worker.modelstore import ModelStoreError

    try:
        asyncio.run(local.run(settings, args.input, output, concurrency))
    except FileNotFoundError as exc:
        log.error("Input not found", extra={"path": exc.filename})
        return 2
    except ModelStoreError as exc:
        log.error("No model to serve", extra={"error": str(exc)})
        return 3
    finally:
        if args.output:
            output.close()
    return 0
