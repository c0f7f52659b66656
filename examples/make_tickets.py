"""Write examples/data/tickets.parquet: 1,500 made-up support tickets for `make demo`.

A Parquet table with the column types data lakes export (integers, strings, timestamps, a
decimal, a boolean, a list the text leaves out), read by the `classify-tickets-parquet` job of
examples/jobs.jsonl, whose results land as Parquet parts under .cache/demo/.
"""

from __future__ import annotations

import datetime as dt
import decimal
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent / "data" / "tickets.parquet"
SUBJECTS = {
    "billing": ["Charged twice for order {n}", "Refund for invoice {n} still missing",
                "Wrong VAT on my last bill", "Card declined but money taken"],
    "shipping": ["Parcel {n} stuck in transit", "Courier left my package outside",
                 "Tracking number {n} not found", "Delivery date moved again"],
    "technical": ["App crashes when I open settings", "Cannot log in after update {n}",
                  "Sync fails with error {n}", "Password reset email never arrives"],
}  # fmt: skip


def main() -> None:
    rng = random.Random(7)
    rows = []
    for n in range(1500):
        topic = rng.choice(sorted(SUBJECTS))
        rows.append({
            "ticket_id": 900_000 + n,
            "subject": rng.choice(SUBJECTS[topic]).format(n=rng.randint(1000, 9999)),
            "opened": dt.datetime(2026, 11, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=37 * n),
            "amount": decimal.Decimal(rng.randint(0, 50_000)) / 100,
            "vip": rng.random() < 0.1,
            "tags": rng.sample(["web", "app", "email", "phone"], 2),
        })  # fmt: skip
    schema = pa.schema([("ticket_id", pa.int64()), ("subject", pa.string()),
                        ("opened", pa.timestamp("s", tz="UTC")),
                        ("amount", pa.decimal128(9, 2)), ("vip", pa.bool_()),
                        ("tags", pa.list_(pa.string()))])  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema), OUT, row_group_size=500)
    print(f"wrote {OUT} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
