"""Errors of the knowledge store, each with a stable code and a hint that says what to do.

They subclass :class:`tools.base.ToolError` so the ``knowledge_search`` tool
reports them to the model as structured errors (code, message, hint) instead
of a crash, and the CLI prints them the same way as a measurement tool's.
"""

from __future__ import annotations

from tools.base import ToolError


class KnowledgeError(ToolError):
    """Something in the knowledge store failed in a way the user can act on."""


class EmbeddingModelMissing(KnowledgeError):
    """The ONNX model file (or the tokenizer vocabulary) is not installed."""


class StoreUnavailable(KnowledgeError):
    """The vector store is corrupted, locked by another process, or unreachable."""
