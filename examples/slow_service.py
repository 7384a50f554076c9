"""The demo's deliberately slow HTTP service: ``GET /orders?customer=ID`` on loopback.

Run ``python -m examples.slow_service --db shop.db --port 0``; it prints
``listening on http://127.0.0.1:PORT`` once it accepts connections, and stops
cleanly on SIGTERM or SIGINT. The slowness is real: see :mod:`examples.shop`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from examples.shop import build_database, list_orders

_local = threading.local()


def _connection(db: str) -> sqlite3.Connection:
    """One read-only connection per server thread (sqlite3 objects are per thread)."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
        _local.conn = conn
    return conn


def make_handler(db: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/healthz":
                self._send(200, {"status": "ok"})
                return
            if url.path != "/orders":
                self._send(404, {"error": "not found"})
                return
            try:
                customer = int(parse_qs(url.query).get("customer", ["17"])[0])
            except ValueError:
                self._send(400, {"error": "customer must be an integer"})
                return
            try:
                self._send(200, {"orders": list_orders(_connection(db), customer)})
            except sqlite3.Error as exc:
                self._send(500, {"error": str(exc)})

        def _send(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: a load test would flood the terminal."""

    return Handler


def serve(db: str, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(db))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="SQLite file; built if missing")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if not Path(args.db).exists():
        build_database(args.db)
    server = serve(args.db, args.host, args.port)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
