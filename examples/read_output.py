"""Print the first rows of a job's output directory (Parquet parts and _SUCCESS): `make demo`.

python examples/read_output.py .cache/demo/tickets-classified
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq


def main(directory: str, rows: int = 8) -> None:
    success = json.loads((Path(directory) / "_SUCCESS").read_text())
    table = pq.read_table(directory)  # the parts; _SUCCESS and _job.json are skipped
    print(f"{directory}: {success['rows']} rows in {len(success['parts'])} parts, "
          f"{success['rows_with_errors']} with errors, {success.get('rows_truncated', 0)} "
          f"truncated, model {success['model']['name']} "
          f"({success['backend']} {success['precision']})")  # fmt: skip
    print(f"columns: {', '.join(f'{f.name} ({f.type})' for f in table.schema)}")
    shown = [c for c in table.column_names if c not in ("scores", "embedding")]
    for row in table.sort_by("row").slice(0, rows).select(shown).to_pylist():
        print("  " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in row.items()))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
