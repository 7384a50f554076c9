"""A tiny HTTP/1.1 keep-alive server used as a load-test target.

Run as ``python http_target.py MODE [--delay S] [--stall S] [--every S]``; it
binds 127.0.0.1 on a free port and prints that port on its first stdout line.

Modes:
* ``fast``: answers at once (a raw asyncio protocol, so the server is not the
  bottleneck when measuring the load generator);
* ``delay``: answers each request after ``--delay`` seconds, concurrently;
* ``stall``: answers at once, but freezes the whole process for ``--stall``
  seconds every ``--every`` seconds, like a stop-the-world GC pause.

``--status`` sets the HTTP status of every answer (default 200).

It lives in its own process so that its CPU use and its stalls do not share
the load generator's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time


def response(status: int) -> bytes:
    reason = {200: "OK", 500: "Internal Server Error"}.get(status, "Status")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
            "Content-Length: 2\r\nConnection: keep-alive\r\n\r\nok").encode()


RESPONSE = response(200)


class Handler(asyncio.Protocol):
    """Parses just enough HTTP/1.1 (headers plus Content-Length) to answer."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            marker = head.find(b"content-length:")
            if marker >= 0:
                line_end = head.find(b"\r\n", marker)
                length = int(head[marker + 15 : line_end if line_end > 0 else None])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            self.answer()

    def answer(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, self._write)
        else:
            self.transport.write(RESPONSE)

    def _write(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(RESPONSE)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["fast", "delay", "stall"])
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--stall", type=float, default=0.3)
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--status", type=int, default=200)
    args = parser.parse_args()
    global RESPONSE
    RESPONSE = response(args.status)
    delay = args.delay if args.mode == "delay" else 0.0
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Handler(delay), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)

    if args.mode == "stall":

        def freeze() -> None:
            time.sleep(args.stall)  # blocks the loop: nothing is served meanwhile
            loop.call_later(args.every, freeze)

        loop.call_later(args.every, freeze)

    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
