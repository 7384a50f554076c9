"""The vector store: chromadb collections of passages, embedded offline.

Two collections share one vector space (:mod:`agent.knowledge.embedding`):

- ``playbooks``: the shipped ``prompts/knowledge/*.md``, built on first use and
  brought up to date when those files change (a digest of their content is
  kept in the collection's metadata, so checking costs one metadata read);
- ``documents``: what users ingest with ``perfagent kb ingest`` (runbooks,
  postmortems, architecture notes).

Every passage's id is derived from (file, position, content), so ingesting
an unchanged file again embeds nothing, an edited file gets its changed
passages re-embedded and its vanished passages deleted, and a crash in the
middle of an ingest leaves nothing that a second run does not repair.

The store is a ``PersistentClient`` at ``<state_dir>/knowledge`` by default,
or a Chroma server (``HttpClient``) when ``CHROMA_HOST`` is set, so several
processes or machines can share one store; embeddings are always computed
here, on the client, with the same model.

A local store that is corrupted or locked by another process is detected
before chromadb opens it (chromadb waits without end on a locked SQLite file)
and reported with its path and how to rebuild it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.knowledge.chunking import CHUNKER_VERSION, Passage, chunk_file, chunk_markdown
from agent.knowledge.errors import KnowledgeError, StoreUnavailable

if TYPE_CHECKING:
    import httpx
    import numpy as np
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

PLAYBOOKS = "playbooks"
DOCUMENTS = "documents"
#: Seconds to wait for another process's write lock before calling the store locked.
LOCK_TIMEOUT = 10.0
#: Files larger than this are skipped on ingest: split them, or they would flood the store.
MAX_FILE_BYTES = 10 * 1024 * 1024
#: Passages embedded and written per batch (one progress step).
WRITE_BATCH = 64
#: Vectors the in-process embedding memo keeps (about 1.5 kB each).
MEMO_LIMIT = 20_000
#: Folders never walked on ingest: tool caches and dependencies, not documents.
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv",
                       ".tox", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
REBUILD_HINT = "run `perfagent kb rebuild` (it re-ingests your documents), or delete the folder"

#: Seconds a Chroma server may take per request before it counts as unreachable;
#: ``PERFAGENT_KB_TIMEOUT`` overrides it. Searches take milliseconds and a write batch
#: well under a second, so only a stalled server ever reaches it.
SERVER_TIMEOUT = 30.0
#: Seconds to wait for a Chroma server to accept the connection (capped by the timeout).
CONNECT_TIMEOUT = 5.0
TIMEOUT_ENV = "PERFAGENT_KB_TIMEOUT"

Progress = Callable[[int, int], None]


def server_timeout() -> float:
    """``PERFAGENT_KB_TIMEOUT`` (seconds, > 0) if set, else :data:`SERVER_TIMEOUT`."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return SERVER_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise KnowledgeError("invalid_setting", f"{TIMEOUT_ENV}={raw!r} is not a number of seconds",
                             f"set {TIMEOUT_ENV} to a positive number (default {SERVER_TIMEOUT:g})")
    return seconds


# --------------------------------------------------------------------------- reading files


class Unreadable(Exception):
    """A file that cannot be ingested as text; the message says why."""


def read_text(path: Path) -> str:
    """The file as text, or :class:`Unreadable` if it is binary, not UTF-8 or unreadable."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise Unreadable(f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MB ({size:,} bytes)")
        data = path.read_bytes()
    except OSError as exc:
        raise Unreadable(f"cannot be read: {exc.strerror or exc}") from None
    if b"\x00" in data[:8192]:
        raise Unreadable("binary file (NUL bytes), not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"not UTF-8 text (invalid byte at offset {exc.start})") from None
    if not text.strip():
        raise Unreadable("empty")
    return text


def discover(paths: Sequence[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to ingest (folders walked, hidden and tool folders skipped) and (path, reason)
    for each given path that does not exist."""
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    for given in paths:
        path = given.expanduser()
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
                files.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
        elif path.exists():
            files.append(path)
        else:
            missing.append((str(given), "no such file or folder"))
    seen: set[Path] = set()
    unique = []
    for f in files:
        resolved = f.resolve()
        if not resolved.exists():  # a dangling link: report it under its own name
            resolved = Path(os.path.abspath(f))
        if resolved not in seen:
            seen.add(resolved)
            unique.append(resolved)
    return unique, missing


# --------------------------------------------------------------------------- reports


@dataclass
class FileReport:
    """What ingest did with one file."""

    path: str
    status: str  # "ingested", "unchanged", "skipped", or "removed" (gone from its folder)
    chunks: int = 0
    added: int = 0
    removed: int = 0
    reason: str = ""


@dataclass
class IngestReport:
    """What one ingest did, file by file, with its rate."""

    files: list[FileReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def added(self) -> int:
        return sum(f.added for f in self.files)

    @property
    def removed(self) -> int:
        return sum(f.removed for f in self.files)

    @property
    def chunks(self) -> int:
        return sum(f.chunks for f in self.files)

    @property
    def skipped(self) -> list[FileReport]:
        return [f for f in self.files if f.status == "skipped"]

    @property
    def chunks_per_second(self) -> float:
        """Passages embedded and written per second (the unchanged ones cost nothing)."""
        return self.added / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"files": [asdict(f) for f in self.files], "chunks": self.chunks,
                "added": self.added, "removed": self.removed,
                "skipped": len(self.skipped), "seconds": round(self.seconds, 3),
                "chunks_per_second": round(self.chunks_per_second, 1)}


# --------------------------------------------------------------------------- embeddings memo


class EmbeddingMemo:
    """Vectors by the hash of the text they embed: one text is embedded once per process.

    A new state directory (every test has one) or a rebuild then costs a write,
    not a minute of embedding. ``PERFAGENT_EMBEDDING_CACHE`` names a folder
    for a SQLite memo shared by processes too (a test session sets it so its
    subprocesses do not embed the playbooks again); unset, it lives in memory.
    """

    def __init__(self) -> None:
        self.vectors: dict[str, bytes] = {}
        self.lock = threading.Lock()

    @staticmethod
    def key(text: str) -> str:
        from agent.knowledge.embedding import MODEL_ID

        return hashlib.sha256(f"{MODEL_ID}\x00{text}".encode()).hexdigest()

    def _disk(self) -> sqlite3.Connection | None:
        folder = os.environ.get("PERFAGENT_EMBEDDING_CACHE")
        if not folder:
            return None
        Path(folder).mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(Path(folder) / "embeddings.sqlite", timeout=30)
        con.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB)")
        return con

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors for ``texts``; only the ones never seen before are computed."""
        import numpy as np

        from agent.knowledge.embedding import DIMENSIONS, encoder

        keys = [self.key(t) for t in texts]
        with self.lock:
            known = {k: self.vectors[k] for k in keys if k in self.vectors}
        con = self._disk()
        try:
            on_disk: set[str] = set()
            if con is not None:
                wanted = sorted(set(keys))
                for start in range(0, len(wanted), 500):
                    part = wanted[start:start + 500]
                    rows = con.execute(
                        f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(part))})",
                        part).fetchall()
                    known.update(dict(rows))
                    on_disk.update(k for k, _ in rows)
            text_of = dict(zip(keys, texts, strict=True))
            todo = list(dict.fromkeys(k for k in keys if k not in known))
            if todo:
                fresh = encoder().encode([text_of[k] for k in todo])
                known.update({k: fresh[n].tobytes() for n, k in enumerate(todo)})
            out = np.stack([np.frombuffer(known[k], dtype=np.float32) for k in keys]) if keys \
                else np.zeros((0, DIMENSIONS), dtype=np.float32)
            with self.lock:
                self.vectors.update(known)
                while len(self.vectors) > MEMO_LIMIT:  # oldest first: dicts keep insertion order
                    del self.vectors[next(iter(self.vectors))]
            if con is not None and set(keys) - on_disk:
                with con:  # write-through: vectors known only in memory go to disk too
                    con.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                                    [(k, known[k]) for k in set(keys) - on_disk])
        finally:
            if con is not None:
                con.close()
        return out


MEMO = EmbeddingMemo()


# --------------------------------------------------------------------------- the store


def _metadata(p: Passage) -> dict[str, Any]:
    return {"source": p.source, "path": p.path or p.source, "heading": p.heading,
            "tags": ",".join(p.tags), "kind": p.kind, "index": p.index, "hash": p.content_hash}


def passage_from(chunk_id: str, document: str, meta: dict[str, Any]) -> Passage:
    """Rebuild a :class:`Passage` from what chromadb stores."""
    tags = str(meta.get("tags") or "")
    return Passage(source=str(meta.get("source", "")), heading=str(meta.get("heading", "")),
                   text=document, tags=tuple(t for t in tags.split(",") if t),
                   kind=str(meta.get("kind", "document")), index=int(meta.get("index", 0)),
                   path=str(meta.get("path", "")), stored_id=chunk_id)


def playbook_files(folder: Path | None = None) -> list[Path]:
    from prompts import knowledge_dir

    return sorted((folder or knowledge_dir()).glob("*.md"))


def playbook_passages(files: Sequence[Path]) -> list[Passage]:
    """The shipped playbooks' passages, as the ``playbooks`` collection holds them."""
    return [p for f in files for p in chunk_markdown(f.name, f.read_text(encoding="utf-8"))]


def playbooks_digest(files: Sequence[Path]) -> str:
    """One hash over the shipped playbooks, the chunker and the model: any change rebuilds."""
    from agent.knowledge.embedding import MODEL_ID

    digest = hashlib.sha256(f"{CHUNKER_VERSION}\x00{MODEL_ID}".encode())
    for f in files:
        digest.update(f.name.encode())
        digest.update(b"\x00")
        digest.update(f.read_bytes())
        digest.update(b"\x00")
    return digest.hexdigest()


def _forget_local_system(path: Path) -> None:
    """Drop chromadb's per-path shared system, so the path can be reopened or deleted.

    chromadb keeps one System per persist directory for the whole process; after
    a failed open it would keep handing back the broken one.
    """
    from chromadb.api.shared_system_client import SharedSystemClient

    with SharedSystemClient._refcount_lock:
        system = SharedSystemClient._identifier_to_system.pop(str(path), None)
        SharedSystemClient._identifier_to_refcount.pop(str(path), None)
    if system is not None:
        # A broken system may not stop cleanly; it is dropped either way.
        with contextlib.suppress(Exception):
            system.stop()


class KnowledgeStore:
    """The two collections behind ``knowledge.search`` and ``perfagent kb``.

    ``state_dir`` holds the local store (``<state_dir>/knowledge``) and the
    list of ingested sources that ``rebuild`` re-reads. With ``host`` set the
    collections live on that Chroma server instead.
    """

    def __init__(self, state_dir: Path, *, host: str | None = None, port: int = 8000,
                 playbook_dir: Path | None = None) -> None:
        self.state_dir = state_dir
        self.host = host
        self.port = port
        self.playbook_dir = playbook_dir
        self.path = state_dir / "knowledge"
        self.sources_file = state_dir / "knowledge-sources.json"
        self._client: ClientAPI | None = None
        self._collections: dict[str, Collection] = {}
        self._lock = threading.RLock()
        self._playbooks_checked = False

    @classmethod
    def from_environment(cls, state_dir: Path) -> KnowledgeStore:
        """Local by default; the Chroma server at ``CHROMA_HOST``:``CHROMA_PORT`` when set."""
        host = os.environ.get("CHROMA_HOST") or None
        raw_port = os.environ.get("CHROMA_PORT") or "8000"
        try:
            port = int(raw_port)
        except ValueError:
            raise KnowledgeError("invalid_setting", f"CHROMA_PORT={raw_port!r} is not a port number",
                                 "set CHROMA_PORT to the Chroma server's port (default 8000)") from None
        return cls(state_dir, host=host, port=port)

    @property
    def location(self) -> str:
        """Where the vectors live: a folder, or the Chroma server's URL."""
        return f"http://{self.host}:{self.port}" if self.host else str(self.path)

    # ----------------------------------------------------------------- opening

    def _unavailable(self, problem: str, exc: BaseException | None = None, *,
                     locked: bool = False) -> StoreUnavailable:
        """The error for a store that cannot be used: where it is and what to do about it."""
        detail = f": {exc}" if exc is not None and str(exc) else ""
        if self.host:
            return StoreUnavailable(
                "knowledge_store_unreachable",
                f"the Chroma server at {self.location} {problem}{detail}",
                f"start it (chroma run --path DIR --port {self.port}) or unset CHROMA_HOST to "
                f"use the local store under {self.state_dir}")
        if locked:
            return StoreUnavailable(
                "knowledge_store_locked", f"the knowledge store at {self.path} {problem}",
                f"stop the other process writing to it and retry; if none is running, "
                f"{REBUILD_HINT} ({self.path})")
        return StoreUnavailable(
            "knowledge_store_corrupted", f"the knowledge store at {self.path} {problem}{detail}",
            f"{REBUILD_HINT} ({self.path})")

    def _probe(self) -> None:
        """Fail fast, with the path, on a SQLite file that is not a database or is locked."""
        db = self.path / "chroma.sqlite3"
        if not db.exists():
            return
        try:
            con = sqlite3.connect(db, timeout=LOCK_TIMEOUT, isolation_level=None)
            try:
                con.execute("BEGIN IMMEDIATE")  # waits for, then takes, the write lock
                con.execute("SELECT count(*) FROM sqlite_master").fetchone()
                con.execute("ROLLBACK")
            finally:
                con.close()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise self._unavailable(
                    f"is locked by another process (waited {LOCK_TIMEOUT:g} s)",
                    locked=True) from None
            raise self._unavailable("cannot be opened", exc) from None
        except sqlite3.DatabaseError as exc:
            raise self._unavailable("is corrupted", exc) from None

    def client(self) -> ClientAPI:
        """The chromadb client, opened once (the first call imports chromadb: about 0.5 s)."""
        with self._lock:
            if self._client is not None:
                return self._client
            import chromadb
            from chromadb.config import Settings as ChromaSettings

            import agent.knowledge.embedding  # noqa: F401  (registers the embedding function)

            settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
            if self.host:
                timeout = self._check_server()
                try:
                    client = chromadb.HttpClient(host=self.host, port=self.port, settings=settings)
                except Exception as exc:
                    raise self._unavailable("cannot be reached", exc) from None
                # chromadb's HTTP session waits without end for an answer; a stalled server
                # must fail a search (and so only degrade an agent turn), not hang it.
                session = getattr(getattr(client, "_server", None), "_session", None)
                if session is not None:
                    session.timeout = timeout
                self._client = client
                return self._client
            self.path.mkdir(parents=True, exist_ok=True)
            self._probe()
            try:
                self._client = chromadb.PersistentClient(path=str(self.path), settings=settings)
            except Exception as exc:
                _forget_local_system(self.path)
                raise self._unavailable("cannot be opened (corrupted?)", exc) from None
            return self._client

    def _check_server(self) -> httpx.Timeout:
        """Fail fast, with the URL, on a Chroma server that is down, silent or not Chroma.

        chromadb's own client would wait forever on a host that accepts connections
        but never answers, so its heartbeat is asked first, with :func:`server_timeout`.
        Returns the timeout for the requests that follow.
        """
        import httpx

        seconds = server_timeout()
        timeout = httpx.Timeout(seconds, connect=min(CONNECT_TIMEOUT, seconds))
        try:
            answer = httpx.get(f"{self.location}/api/v2/heartbeat", timeout=timeout)
        except httpx.TimeoutException:
            raise self._unavailable(f"did not answer within {seconds:g} s") from None
        except httpx.HTTPError as exc:
            raise self._unavailable("cannot be reached", exc) from None
        if answer.status_code != 200 or "nanosecond heartbeat" not in answer.text:
            raise self._unavailable(
                f"does not answer like a Chroma server (HTTP {answer.status_code} "
                "on /api/v2/heartbeat)")
        return timeout

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn chromadb and SQLite failures into :class:`StoreUnavailable` naming the store."""
        try:
            yield
        except KnowledgeError:
            raise
        except (sqlite3.DatabaseError, OSError, ConnectionError) as exc:
            raise self._unavailable(f"failed while {action}", exc) from None
        except Exception as exc:
            from chromadb.errors import ChromaError

            if isinstance(exc, ChromaError) or type(exc).__module__.startswith(("httpx", "chromadb")):
                raise self._unavailable(f"failed while {action}", exc) from None
            raise

    def collection(self, name: str) -> Collection:
        """A collection by name, created on first use with the offline embedding function."""
        with self._lock:
            if name in self._collections:
                return self._collections[name]
            from agent.knowledge.embedding import MODEL_ID, OfflineMiniLM

            client = self.client()
            with self._guard(f"opening collection {name!r}"):
                try:
                    col = client.get_or_create_collection(
                        name, embedding_function=OfflineMiniLM(),  # type: ignore[arg-type]
                        configuration={"hnsw": {"space": "cosine"}},
                        metadata={"model": MODEL_ID, "generation": uuid.uuid4().hex})
                except ValueError as exc:  # stored with another embedding function or model
                    raise self._unavailable(f"has a collection {name!r} this version cannot use",
                                            exc) from None
            self._collections[name] = col
            return col

    # ----------------------------------------------------------------- writing

    def _write(self, col: Collection, passages: Sequence[Passage], existing: set[str],
               progress: Progress | None, done: int, total: int) -> int:
        """Embed and add the passages whose ids are not stored yet; returns how many.

        Sorted by length first, so each embedding batch pads little (dynamic padding
        works within a batch of :data:`WRITE_BATCH`).
        """
        new = sorted((p for p in passages if p.id not in existing),
                     key=lambda p: len(p.embedding_text()))
        for start in range(0, len(new), WRITE_BATCH):
            batch = new[start:start + WRITE_BATCH]
            vectors = MEMO.embed([p.embedding_text() for p in batch])
            with self._guard(f"writing to {col.name!r}"):
                col.upsert(ids=[p.id for p in batch], embeddings=vectors,  # type: ignore[arg-type]
                           documents=[p.text for p in batch],
                           metadatas=[_metadata(p) for p in batch])
            done += len(batch)
            if progress:
                progress(done, total)
        return len(new)

    def _touch(self, col: Collection, **extra: str) -> None:
        """Give the collection a new generation, so keyword indexes elsewhere refresh."""
        from agent.knowledge.embedding import MODEL_ID

        meta = {k: v for k, v in (col.metadata or {}).items() if not k.startswith("hnsw:")}
        meta.update({"model": MODEL_ID, "generation": uuid.uuid4().hex, **extra})
        with self._guard(f"updating {col.name!r}"):
            col.modify(metadata=meta)

    def sync_playbooks(self, force: bool = False, progress: Progress | None = None) -> bool:
        """Bring ``playbooks`` up to date with the shipped files; True if anything changed.

        Only changed passages are embedded: an edit to one playbook costs that
        playbook's changed sections, not the whole set.
        """
        with self._lock:
            if self._playbooks_checked and not force:
                return False
            files = playbook_files(self.playbook_dir)
            digest = playbooks_digest(files)
            col = self.collection(PLAYBOOKS)
            if (col.metadata or {}).get("source_digest") == digest and not force:
                self._playbooks_checked = True
                return False
            passages = playbook_passages(files)
            with self._guard("reading 'playbooks'"):
                stored = set(col.get(include=[])["ids"])
            wanted = {p.id for p in passages}
            self._write(col, passages, stored, progress, 0, len(wanted - stored))
            stale = sorted(stored - wanted)
            if stale:
                with self._guard("deleting from 'playbooks'"):
                    col.delete(ids=stale)
            self._touch(col, source_digest=digest)
            self._playbooks_checked = True
            return True

    def ingest(self, paths: Sequence[Path], progress: Progress | None = None,
               *, remember: bool = True) -> IngestReport:
        """Add or update user documents; unreadable files are reported and skipped.

        ``progress(done, total)`` is called after each written batch of passages.
        """
        started = time.perf_counter()
        report = IngestReport()
        files, missing = discover(paths)
        report.files.extend(FileReport(path=p, status="skipped", reason=r) for p, r in missing)
        col = self.collection(DOCUMENTS)
        with self._guard("reading 'documents'"):
            got = col.get(include=["metadatas"])
        stored_by_path: dict[str, set[str]] = {}
        for chunk_id, meta in zip(got["ids"], got["metadatas"] or [], strict=True):
            stored_by_path.setdefault(str(meta.get("path", "")), set()).add(chunk_id)
        plans: list[tuple[FileReport, list[Passage], set[str]]] = []
        for path in files:
            entry = FileReport(path=str(path), status="ingested")
            report.files.append(entry)
            try:
                text = read_text(path)
            except Unreadable as exc:
                entry.status, entry.reason = "skipped", str(exc)
                continue
            passages = chunk_file(str(path), text, kind="document", path=str(path))
            stored = stored_by_path.get(str(path), set())
            wanted = {p.id for p in passages}
            entry.chunks = len(passages)
            entry.added = len(wanted - stored)
            entry.removed = len(stored - wanted)
            if not entry.added and not entry.removed:
                entry.status = "unchanged"
            plans.append((entry, passages, stored))
        report.files.extend(self._vanished(stored_by_path, paths))
        everything = [p for _, passages, _ in plans for p in passages]
        stored_ids = {i for _, _, stored in plans for i in stored}
        self._write(col, everything, stored_ids, progress, 0,
                    sum(e.added for e, _, _ in plans))
        for _entry, passages, stored in plans:
            stale = sorted(stored - {p.id for p in passages})
            if stale:
                with self._guard("deleting from 'documents'"):
                    col.delete(ids=stale)
        for entry in report.files:
            if entry.status == "removed":
                with self._guard("deleting from 'documents'"):
                    col.delete(where={"path": entry.path})
        if report.added or report.removed:
            self._touch(col)
        if remember:
            self._remember([p for p in paths if p.expanduser().exists()])
        report.seconds = time.perf_counter() - started
        return report

    @staticmethod
    def _vanished(stored_by_path: dict[str, set[str]],
                  paths: Sequence[Path]) -> list[FileReport]:
        """Stored files under the given folders that no longer exist: a folder is mirrored."""
        folders = [str(p.expanduser().resolve()) for p in paths if p.expanduser().is_dir()]
        return [FileReport(path=path, status="removed", removed=len(ids),
                           reason="file no longer exists")
                for path, ids in sorted(stored_by_path.items())
                if any(path.startswith(f + os.sep) for f in folders) and not Path(path).exists()]

    def forget(self, paths: Sequence[Path]) -> int:
        """Remove the passages of these files (or of files under these folders)."""
        col = self.collection(DOCUMENTS)
        prefixes = [str(p.expanduser().resolve()) for p in paths]
        with self._guard("reading 'documents'"):
            got = col.get(include=["metadatas"])
        ids = [i for i, m in zip(got["ids"], got["metadatas"] or [], strict=True)
               if any(str(m.get("path", "")) == pre or str(m.get("path", "")).startswith(pre + os.sep)
                      for pre in prefixes)]
        if ids:
            with self._guard("deleting from 'documents'"):
                col.delete(ids=ids)
            self._touch(col)
        sources = [s for s in self._sources() if s not in prefixes]
        self._save_sources(sources)
        return len(ids)

    # ----------------------------------------------------------------- sources list

    def _sources(self) -> list[str]:
        try:
            data = json.loads(self.sources_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [str(s) for s in data.get("sources", [])] if isinstance(data, dict) else []

    def _save_sources(self, sources: list[str]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.sources_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"sources": sources}, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.sources_file)

    def _remember(self, paths: Sequence[Path]) -> None:
        sources = self._sources()
        for p in paths:
            resolved = str(p.expanduser().resolve())
            if resolved not in sources:
                sources.append(resolved)
        self._save_sources(sources)

    # ----------------------------------------------------------------- reading

    def generation(self) -> tuple[str, str]:
        """Changes whenever either collection's content changes (here or in another process)."""
        for name in (PLAYBOOKS, DOCUMENTS):
            self.collection(name)
        client = self.client()
        try:
            with self._guard("reading collection metadata"):
                return tuple(  # type: ignore[return-value]
                    str((client.get_collection(name).metadata or {}).get("generation", ""))
                    for name in (PLAYBOOKS, DOCUMENTS))
        except StoreUnavailable:
            # Deleted by a rebuild in another process: forget the handles, open anew.
            with self._lock:
                self._collections.clear()
                self._playbooks_checked = False
            self.sync_playbooks()
            return (uuid.uuid4().hex, uuid.uuid4().hex)

    def stored(self, name: str) -> list[Passage]:
        """Every passage of one collection, in file and position order."""
        col = self.collection(name)
        with self._guard(f"reading {name!r}"):
            got = col.get(include=["documents", "metadatas"])
        rows = sorted(zip(got["ids"], got["documents"] or [], got["metadatas"] or [], strict=True),
                      key=lambda r: (str(r[2].get("path", "")), int(r[2].get("index", 0))))
        return [passage_from(i, doc, dict(meta)) for i, doc, meta in rows]

    def passages(self) -> list[Passage]:
        """Every stored passage (playbooks first), for the keyword index."""
        return [p for name in (PLAYBOOKS, DOCUMENTS) for p in self.stored(name)]

    def fetch(self, ids: Sequence[str]) -> dict[str, Passage]:
        """Passages by id from either collection (those the keyword index does not hold yet)."""
        found: dict[str, Passage] = {}
        for name in (PLAYBOOKS, DOCUMENTS):
            wanted = [i for i in ids if i not in found]
            if not wanted:
                break
            with self._guard(f"reading {name!r}"):
                got = self.collection(name).get(ids=wanted, include=["documents", "metadatas"])
            for i, doc, meta in zip(got["ids"], got["documents"] or [], got["metadatas"] or [],
                                    strict=True):
                found[i] = passage_from(i, doc, dict(meta))
        return found

    def nearest(self, vector: np.ndarray, n: int) -> list[tuple[float, str]]:
        """The ids of the ``n`` passages closest to ``vector`` in both collections, with
        their cosine similarity, best first.

        Only ids and distances come back: the texts are in the keyword index
        already, and fetching 50 documents with their metadata would cost more
        than the nearest-neighbour search itself.
        """
        hits: list[tuple[float, str]] = []
        for name in (PLAYBOOKS, DOCUMENTS):
            col = self.collection(name)
            with self._guard(f"querying {name!r}"):
                count = col.count()
                if not count:
                    continue
                got = col.query(query_embeddings=[vector], n_results=min(n, count),  # type: ignore[list-item]
                                include=["distances"])
            hits.extend((1.0 - float(dist), chunk_id) for chunk_id, dist in zip(
                got["ids"][0], got["distances"][0], strict=True))  # type: ignore[index]
        hits.sort(key=lambda h: -h[0])
        return hits[:n]

    def stats(self) -> dict[str, Any]:
        """Counts per collection and kind, the store's location and size on disk."""
        from agent.knowledge.embedding import MODEL_ID

        info: dict[str, Any] = {"location": self.location, "model": MODEL_ID, "collections": {}}
        for name in (PLAYBOOKS, DOCUMENTS):
            col = self.collection(name)
            with self._guard(f"reading {name!r}"):
                got = col.get(include=["metadatas"])
            files = {str(m.get("path", "")) for m in got["metadatas"] or []}
            info["collections"][name] = {"chunks": len(got["ids"]), "files": len(files)}
        info["sources"] = self._sources()
        if not self.host and self.path.exists():
            info["bytes"] = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return info

    # ----------------------------------------------------------------- rebuilding

    def close(self) -> None:
        """Release the client (a local store's files can then be deleted or reopened)."""
        with self._lock:
            self._collections.clear()
            self._client = None
            self._playbooks_checked = False
            if not self.host:
                _forget_local_system(self.path)

    def rebuild(self, progress: Progress | None = None) -> IngestReport:
        """Start the store over: delete it (even if corrupted), rebuild the playbooks,
        and re-ingest the documents from their remembered sources.

        On a Chroma server, documents under none of this machine's sources are
        written back from the store (see :meth:`_keep`).
        """
        with self._lock:
            kept: list[Passage] = []
            if self.host:
                # Other machines' documents, read before the collections go (see _keep).
                kept = self.stored(DOCUMENTS)
                client = self.client()
                for name in (PLAYBOOKS, DOCUMENTS):
                    with self._guard(f"deleting {name!r}"):
                        if any(c.name == name for c in client.list_collections()):
                            client.delete_collection(name)
                self._collections.clear()
                self._playbooks_checked = False
            else:
                self.close()
                shutil.rmtree(self.path, ignore_errors=True)
            self.sync_playbooks(force=True, progress=progress)
            sources = [Path(s) for s in self._sources()]
            report = self.ingest(sources, progress, remember=False)
            report.files.extend(self._keep(kept, progress))
            return report

    def _keep(self, stored: Sequence[Passage], progress: Progress | None) -> list[FileReport]:
        """Write back the stored documents that are not under this machine's sources.

        A Chroma server is shared, but the list of sources that ``rebuild`` re-reads
        is this machine's: documents ingested elsewhere are re-embedded from their
        stored text instead, so a rebuild here deletes nobody else's documents.
        """
        sources = self._sources()
        others = [p for p in stored
                  if not any(p.path == s or p.path.startswith(s + os.sep) for s in sources)]
        if not others:
            return []
        col = self.collection(DOCUMENTS)
        self._write(col, others, set(), progress, 0, len(others))
        self._touch(col)
        by_path: dict[str, int] = {}
        for p in others:
            by_path[p.path] = by_path.get(p.path, 0) + 1
        return [FileReport(path=path, status="ingested", chunks=n, added=n,
                           reason="kept from the store: ingested from another machine's sources")
                for path, n in sorted(by_path.items())]
