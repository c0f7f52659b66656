"""`tabular-worker`: run (local, no cloud), serve (Pub/Sub), submit (jobs in, results back)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from typing import BinaryIO

from base import logs
from base.env import load_settings
from worker.settings import WorkerSettings

log = logs.get("worker.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tabular-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="process job lines from a file or stdin; results to stdout")
    run.add_argument("--input", required=True, help="JSON-lines job file, or - for stdin")
    run.add_argument("--output", help="write results here instead of stdout")
    run.add_argument("--concurrency", type=int, default=0, help="jobs in flight (default: "
                     "TABULAR_MAX_IN_FLIGHT_JOBS)")  # fmt: skip
    run.add_argument(
        "--format",
        choices=["auto", "jsonl", "summary"],
        default="auto",
        help="jsonl: one JSON result per line (the machine format); summary: a readable view; "
        "auto (default): summary when writing to a terminal, else jsonl",
    )
    sub.add_parser("serve", help="pull jobs from Pub/Sub, publish results (see README)")
    submit = sub.add_parser("submit", help="publish a table as jobs; --wait gathers results")
    what = submit.add_mutually_exclusive_group(required=True)
    what.add_argument("--input", help="CSV/JSONL table, or a jobs file (read by this client)")
    what.add_argument(
        "--source",
        help="a file under the workers' TABULAR_DATA_ROOT (CSV, JSONL, Parquet): one job that "
        "writes Parquet parts to --output-path (docs/jobs.md, 'Tables of any size')",
    )
    submit.add_argument("--output-path", default="", help="with --source: the output directory")
    submit.add_argument("--columns", default="", help="with --source: input columns to copy")
    submit.add_argument(
        "--format",
        default="auto",
        choices=["auto", "csv", "jsonl", "jobs"],
        help="input kind (auto: by file suffix; .jsonl means a table)",
    )
    submit.add_argument("--type", default="embed", choices=["embed", "classify"])
    submit.add_argument("--rows-per-job", type=int, default=64)
    submit.add_argument("--labels", default="", help="comma-separated labels (classify)")
    submit.add_argument(
        "--method", default="auto", choices=["auto", "zero_shot", "few_shot", "llm"]
    )
    submit.add_argument("--template", help="row-to-text template, e.g. '{name}: {text}'")
    submit.add_argument("--job-prefix", default="", help="job ids are PREFIX-000000, ...")
    submit.add_argument("--wait", action="store_true", help="gather the results")
    submit.add_argument(
        "--results-subscription",
        default="",
        help="subscription on the results topic (default: RESULTS_TOPIC-sub)",
    )
    submit.add_argument("--output", default="", help="results file: .jsonl, or .npy")
    submit.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load_settings(WorkerSettings)
    if settings is None:
        return 2
    if args.command == "submit":
        return _submit(settings, args)
    from worker.backend import BackendUnavailable
    from worker.modelstore import ModelStoreError

    try:
        if args.command == "run":
            return _run(settings, args)
        from worker.service import Service

        return asyncio.run(Service(settings).run())
    except BackendUnavailable as exc:
        log.error("Inference backend unavailable", extra={"error": str(exc)})
        return 2
    except ModelStoreError as exc:
        log.error("No model to serve", extra={"error": str(exc)})
        return 3


def _submit(settings: WorkerSettings, args: argparse.Namespace) -> int:
    from worker.submit import SubmitOptions, submit

    opts = SubmitOptions(
        input=args.input or "", source=args.source or "", output_path=args.output_path,
        columns=[x for x in args.columns.split(",") if x], format=args.format, type=args.type,
        rows_per_job=args.rows_per_job,
        labels=[x for x in args.labels.split(",") if x], method=args.method,
        template=args.template, job_prefix=args.job_prefix, wait=args.wait,
        results_subscription=args.results_subscription, output=args.output,
        timeout=args.timeout,
    )  # fmt: skip
    try:
        return asyncio.run(submit(settings, opts))
    except (OSError, ValueError) as exc:
        log.error("Cannot submit", extra={"error": str(exc)})
        return 2


def _run(settings: WorkerSettings, args: argparse.Namespace) -> int:
    from worker import local

    concurrency = args.concurrency or settings.max_in_flight_jobs
    if not settings.output_root:  # like the data root: files land under the working directory
        settings = dataclasses.replace(settings, output_root=".")
    output: BinaryIO
    if args.output:
        output = open(args.output, "wb")
    else:
        output = sys.stdout.buffer
    fmt = args.format
    if fmt == "auto":
        fmt = "summary" if not args.output and sys.stdout.isatty() else "jsonl"
    try:
        asyncio.run(local.run(settings, args.input, output, concurrency, fmt))
    except FileNotFoundError as exc:
        log.error("Input not found", extra={"path": exc.filename})
        return 2
    finally:
        if args.output:
            output.close()
    return 0
