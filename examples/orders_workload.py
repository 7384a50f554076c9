"""Reproduce the slow ``/orders`` request path in-process, for profiling.

Builds a fresh shop database in a temporary folder (same generator and seed
as the service) and serves the orders of a few customers, exactly as the HTTP
handler does. ``perfagent measure profile_python --args
'{"script": "examples/orders_workload.py"}'`` shows where the time goes.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.shop import build_database, list_orders


def main(requests: int = 12) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = build_database(Path(tmp) / "shop.db", customers=400, orders=20_000)
        conn = sqlite3.connect(db)
        try:
            served = sum(len(list_orders(conn, customer)) for customer in range(1, requests + 1))
        finally:
            conn.close()
    print(f"served {requests} requests, {served} orders")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 12)
