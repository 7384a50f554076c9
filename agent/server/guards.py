"""ASGI guards in front of every route (the MCP mount included): API keys and body size.

They are plain ASGI middleware rather than FastAPI dependencies so that they
also cover mounted sub-applications, and so that a refused request costs no
routing, parsing or body read.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def error_body(code: str, message: str, hint: str = "", **extra: object) -> dict[str, object]:
    """The one error shape every HTTP error uses."""
    return {"error": {"code": code, "message": message, "hint": hint, **extra}}


async def send_error(send: Send, status: int, code: str, message: str, hint: str,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error_body(code, message, hint)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *headers]})
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """Require ``Authorization: Bearer <key>`` with one of ``keys`` (none: let all in).

    Every key is compared in constant time, and all of them are compared, so
    the response time tells nothing about how much of a guess was right.
    """

    def __init__(self, app: ASGIApp, keys: Iterable[str], open_paths: Iterable[str] = (),
                 open_prefixes: Iterable[str] = ()) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = tuple(open_prefixes)

    def _allowed(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        if path in self.open_paths or path.startswith(self.open_prefixes):
            return True
        if scope.get("method") == "OPTIONS":  # CORS preflight carries no credentials
            return True
        header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
        scheme, _, token = header.partition(b" ")
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(token.strip(), key)
        return matched and scheme.lower() == b"bearer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await send_error(send, 401, "unauthorized", "a valid API key is required",
                         "send the header 'Authorization: Bearer <key>' with a key from "
                         "PERFAGENT_API_KEYS", headers=[(b"www-authenticate", b"Bearer")])


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body outgrows the limit while it is read.

    An HTTPException, because FastAPI turns any other error while reading a
    body into a 400; the app's handler renders it in the shared shape."""

    code = "body_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.hint = "send a shorter message, or raise PERFAGENT_MAX_BODY_BYTES on the server"


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, before or while they arrive.

    A declared Content-Length over the limit is refused without reading a
    byte; a chunked body is counted as it is read.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:  # reached here only from routes with no handler
            if not started:
                await send_error(send, 413, exc.code, str(exc.detail), exc.hint)

    async def _refuse(self, send: Send) -> None:
        refusal = BodyTooLarge(self.max_bytes)
        await send_error(send, 413, refusal.code, str(refusal.detail), refusal.hint)
