"""Results written beside the data: an output directory of Parquet parts and, last, `_SUCCESS`.

The directory is the job's state, as with Hadoop and Spark output committers: no coordinator, no
database. `_job.json` claims it for one job (created exclusively, so two jobs never share a
directory); each shard writes `part-NNNNN.parquet` under a temporary name and renames it, so no
reader sees half a part and a redelivered shard replaces its part instead of adding rows;
whichever worker finds every part present writes `_SUCCESS` (again by rename) and removes the
temporary files left by shards that died mid-write. Paths are checked like `source.path`: no
absolute path, no `..`, no symlink out of `TABULAR_OUTPUT_ROOT` (`path_outside_root`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import orjson

from worker.errors import JobError
from worker.jsonvalue import describe

SUCCESS = "_SUCCESS"
CLAIM = "_job.json"
_TMP = ".tmp-"


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def resolve_output(output_root: str, path: str) -> Path:
    """The directory `path` names under `output_root` (created), refusing anything outside."""
    if not output_root:
        raise JobError(
            "output_disabled", "this worker writes no files: TABULAR_OUTPUT_ROOT is not set"
        )
    shown = describe(path)
    rel = Path(path)
    if "\x00" in path or rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise JobError("path_outside_root", f"output.path {shown} must be relative, without ..")
    try:
        root = Path(output_root).resolve()
        target = (root / rel).resolve()
        inside = target.is_relative_to(root) and target != root
    except (OSError, RuntimeError) as exc:
        raise JobError("output_unwritable", f"output.path {shown}: {exc}") from None
    if not inside:
        raise JobError("path_outside_root", f"output.path {shown} leaves the output root")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise JobError("output_unwritable", f"output.path {shown} is not a directory") from None
    except OSError as exc:
        raise _write_error(f"output.path {shown}", exc) from None
    return target


def _write_error(what: str, exc: OSError) -> JobError:
    # A full disk or quota may clear up: retryable. Anything else (permissions) will not.
    code = "output_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "output_unwritable"
    return JobError(code, f"{what} cannot be written: {exc.strerror or exc}")


class OutputDir:
    def __init__(self, path: Path, job_id: str) -> None:
        self.path = path
        self.job_id = job_id

    def claim(self) -> dict[str, Any] | None:
        """Take the directory for this job; its `_SUCCESS` document when the job already ran.

        Refuses (`output_exists`) a directory another job claimed or completed.
        """
        done = self.success()
        if done is not None:
            if done.get("job_id") != self.job_id:
                raise self._taken(done.get("job_id"))
            return done
        claim = self.path / CLAIM
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _read_json(claim).get("job_id")
            if owner != self.job_id:
                raise self._taken(owner) from None
            return None
        except OSError as exc:
            raise _write_error(f"{claim.name}", exc) from None
        try:
            os.write(fd, orjson.dumps({"job_id": self.job_id}))
        finally:
            os.close(fd)
        return None

    def _taken(self, owner: Any) -> JobError:
        return JobError(
            "output_exists",
            f"the output directory holds the output of another job ({describe(owner)})",
        )

    def success(self) -> dict[str, Any] | None:
        path = self.path / SUCCESS
        return _read_json(path) if path.exists() else None

    def has_part(self, index: int) -> bool:
        return (self.path / part_name(index)).is_file()

    def write_part(self, index: int, table: Any) -> None:
        """Write the part atomically (its rows and sha256 are read once, by `commit`)."""
        import pyarrow.parquet as pq

        final = self.path / part_name(index)
        tmp = self.path / f"{_TMP}{uuid.uuid4().hex[:12]}-{final.name}"
        try:
            pq.write_table(table, tmp, compression="zstd")
            _fsync(tmp)
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if final.is_file() and (self.path / SUCCESS).exists():
                return  # a duplicate delivery raced the commit, which removed its temporary file
            raise _write_error(final.name, exc) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def missing(self, count: int) -> list[int]:
        present = {p.name for p in self.path.glob("part-*.parquet")}
        return [i for i in range(count) if part_name(i) not in present]

    def commit(self, count: int, document: dict[str, Any]) -> dict[str, Any]:
        """Write `_SUCCESS` (every part listed with its rows and sha256); returns its document."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        parts, rows, errors, truncated = [], 0, 0, 0
        for i in range(count):
            path = self.path / part_name(i)
            with pq.ParquetFile(path) as part:  # one open: on gcsfuse each is a request
                names = [c for c in ("error", "truncated") if c in part.schema_arrow.names]
                table = part.read(columns=names)  # a part of an older worker has no truncated
            n, bad = table.num_rows, table.num_rows - table.column("error").null_count
            cut = int(pc.sum(table.column("truncated")).as_py() or 0) if "truncated" in names else 0
            parts.append({"name": path.name, "rows": n, "errors": bad, "truncated": cut,
                          "sha256": _sha256(path)})  # fmt: skip
            rows, errors, truncated = rows + n, errors + bad, truncated + cut
        doc = {"job_id": self.job_id, **document, "rows": rows, "rows_with_errors": errors,
               "rows_truncated": truncated, "parts": parts}  # fmt: skip
        for stale in self.path.glob(f"{_TMP}*"):
            stale.unlink(missing_ok=True)
        tmp = self.path / f"{_TMP}{uuid.uuid4().hex[:12]}-{SUCCESS}"
        try:
            tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
            _fsync(tmp)
            os.replace(tmp, self.path / SUCCESS)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _write_error(SUCCESS, exc) from None
        return doc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
