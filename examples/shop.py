"""A small shop database with two planted performance bugs, for the demo and the tests.

- ``order_items.order_id`` and ``orders.customer_id`` have no index, so the
  lookups below scan whole tables (the missing index).
- :func:`list_orders` loads the items of each order with one query per order
  (the N+1 query loop).

The data is generated from a fixed seed, so every run measures the same work.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    total_cents INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE order_items (
    id INTEGER PRIMARY KEY,
    order_id INTEGER NOT NULL REFERENCES orders(id),
    sku TEXT NOT NULL,
    quantity INTEGER NOT NULL
);
"""


def build_database(path: str | Path, *, customers: int = 400, orders: int = 40_000,
                   items_per_order: int = 3, seed: int = 7) -> Path:
    """Create the shop database at ``path`` (replacing it) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    rng = random.Random(seed)
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMA)
        conn.executemany(
            "INSERT INTO customers VALUES (?, ?, ?)",
            ((i, f"customer {i}", rng.choice(["Lyon", "Oslo", "Porto", "Turin"]))
             for i in range(1, customers + 1)),
        )
        conn.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?)",
            ((i, rng.randint(1, customers), rng.randint(500, 50_000),
              f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}")
             for i in range(1, orders + 1)),
        )
        conn.executemany(
            "INSERT INTO order_items (order_id, sku, quantity) VALUES (?, ?, ?)",
            ((order, f"SKU-{rng.randint(1, 999):03d}", rng.randint(1, 4))
             for order in range(1, orders + 1) for _ in range(items_per_order)),
        )
        conn.commit()
    finally:
        conn.close()
    return path


def list_orders(conn: sqlite3.Connection, customer_id: int, limit: int = 40) -> list[dict]:
    """The customer's latest orders with their items (deliberately slow)."""
    orders = conn.execute(
        "SELECT id, total_cents, created_at FROM orders WHERE customer_id = ? "
        "ORDER BY created_at DESC LIMIT ?",
        (customer_id, limit),
    ).fetchall()
    result = []
    for order_id, total_cents, created_at in orders:
        items = conn.execute(
            "SELECT sku, quantity FROM order_items WHERE order_id = ?", (order_id,)
        ).fetchall()
        result.append({"id": order_id, "total_cents": total_cents, "created_at": created_at,
                       "items": [{"sku": s, "quantity": q} for s, q in items]})
    return result
