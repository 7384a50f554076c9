"""The eval response cache: a model reply is reused when the same request comes again.

:class:`CachedModel` wraps any :class:`~agent.models.ChatModel`. The key is
the SHA-256 of the model spec, the system prompt and per-turn context, the
conversation (roles, contents, tool calls; never message ids, which are
random), the tool schemas, the token limit and the epoch: the epoch is part
of the key so that ``--epochs 3`` samples the model three times instead of
replaying one answer. Replies are stored in SQLite (``eval_cache.sqlite``
under the state directory) as content, tool calls and token usage; a failed
call is never stored, its exception passes through.

A request is only identical when everything before it was, so the cache pays
off on re-runs of text-only turns and on the first call of each turn; once
a tool has measured something new (timings differ run to run), later calls
of that turn miss. Replayed replies keep the token usage they had when they
were made, so cost and token scorers judge a cached run like a fresh one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_core.messages import AIMessage, BaseMessage

    from agent.models import ChatModel, ModelRequest

CACHE_FILE = "eval_cache.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""

_ROLES = {"human": "user", "ai": "assistant", "tool": "tool", "system": "system"}


def message_record(message: BaseMessage) -> dict[str, Any]:
    """A LangChain message as a plain, stable dict: role, content, and name, tool calls,
    tool call id and status where they apply. Also the shape of ``CaseRun.messages``."""
    from langchain_core.messages import AIMessage, ToolMessage

    record: dict[str, Any] = {"role": _ROLES.get(message.type, message.type),
                              "content": message.content}
    if message.name:
        record["name"] = message.name
    if isinstance(message, AIMessage) and message.tool_calls:
        record["tool_calls"] = [{"name": c["name"], "args": c["args"], "id": c["id"]}
                                for c in message.tool_calls]
    if isinstance(message, ToolMessage):
        record["tool_call_id"] = message.tool_call_id
        record["status"] = message.status
    return record


def cache_key(spec: str, request: ModelRequest, epoch: int) -> str:
    doc = {
        "model": spec,
        "system": request.system,
        "context": request.context,
        "messages": [message_record(m) for m in request.messages],
        "tools": [dataclasses.asdict(t) for t in request.tools],
        "max_tokens": request.max_tokens,
        "epoch": epoch,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


class CachedModel:
    """A :class:`ChatModel` that answers repeated requests from the cache.

    ``hits`` and ``misses`` count this instance's calls (the runner uses one
    instance per case-epoch, so they describe that case).
    """

    def __init__(self, inner: ChatModel, cache_path: Path, epoch: int) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.path = cache_path
        self.epoch = epoch
        self.hits = 0
        self.misses = 0

    async def generate(self, request: ModelRequest) -> AIMessage:
        key = cache_key(self.spec, request, self.epoch)
        stored = await asyncio.to_thread(self._get, key)
        if stored is not None:
            self.hits += 1
            from langchain_core.messages import AIMessage

            message = AIMessage(**stored)
            if request.on_text and message.text:
                request.on_text(message.text)  # streaming surfaces still see the text
            return message
        self.misses += 1
        message = await self.inner.generate(request)
        await asyncio.to_thread(self._put, key, message)
        return message

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_SCHEMA)
        return conn

    def _failed(self, exc: sqlite3.Error) -> RuntimeError:
        return RuntimeError(f"response cache {self.path}: {exc}; run with --no-cache, or move "
                            "the file aside to start a new cache")

    def _get(self, key: str) -> dict[str, Any] | None:
        try:
            conn = self._connect()
            try:
                row = conn.execute("SELECT response FROM responses WHERE key = ?",
                                   (key,)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise self._failed(exc) from None
        return json.loads(row[0]) if row else None

    def _put(self, key: str, message: AIMessage) -> None:
        response = {
            "content": message.content,
            "tool_calls": [{"name": c["name"], "args": c["args"], "id": c["id"]}
                           for c in message.tool_calls],
            "usage_metadata": message.usage_metadata,
        }
        try:
            conn = self._connect()
            try:
                with conn:
                    conn.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                                 (key, self.spec, json.dumps(response), time.time()))
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise self._failed(exc) from None
