"""Split documents into passages by heading, small enough for the embedding model.

A passage is one section of a document: a ``##`` section of Markdown, a titled
section of reStructuredText, or (for plain text, which has no headings) a run
of paragraphs. Sections longer than :data:`MAX_TOKENS` are split between
paragraphs, never inside a fenced code block unless the block alone is too
long. The limit keeps a passage, with its heading, within the embedding
model's truncation at 256 WordPiece tokens, so its vector sees all of it.

Token counts here are estimates (words and punctuation marks): on the shipped
playbooks the WordPiece count is 1.16 times the estimate, so 200 estimated
tokens are about 232 real ones. Chunking stays pure Python, without the
tokenizer, so nothing here loads the embedding stack.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import PurePath

#: Estimated tokens per passage before a section is split between paragraphs.
MAX_TOKENS = 200
#: Bump when the chunker's output changes, so stored passages are rebuilt.
CHUNKER_VERSION = "2"

_TOKEN = re.compile(r"\w+|[^\w\s]")
_FENCE = re.compile(r"^\s*(```|~~~)")
_MD_HEADING = re.compile(r"^(#{1,2})\s+(.+?)\s*#*\s*$")
_RST_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+:.<>_])\1{2,}\s*$")

MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mdx", ".mkd"})
RST_SUFFIXES = frozenset({".rst", ".rest"})


@dataclass(frozen=True)
class Passage:
    """One retrievable section: where it came from, its heading path, and its text."""

    source: str
    heading: str
    text: str
    tags: tuple[str, ...] = ()
    #: "playbook" (shipped with perfagent) or "document" (ingested by the user).
    kind: str = "playbook"
    #: position of the passage in its document, from 0.
    index: int = 0
    #: the file the passage came from (absolute for documents; the file name for playbooks).
    path: str = field(default="", compare=False)
    #: the id it is stored under, when read back from the store (saves recomputing it).
    stored_id: str = field(default="", compare=False, repr=False)

    @property
    def content_hash(self) -> str:
        """sha256 of what gets embedded and shown, so an edit changes the passage's id."""
        digest = hashlib.sha256()
        for part in (self.heading, self.text, ",".join(self.tags)):
            digest.update(part.encode("utf-8"))
            digest.update(b"\x00")
        return digest.hexdigest()

    @property
    def id(self) -> str:
        """Stable id from (file, position, content): re-ingesting unchanged text is a no-op."""
        if self.stored_id:
            return self.stored_id
        key = f"{self.path or self.source}\x00{self.index}\x00{self.content_hash}"
        return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]

    def embedding_text(self) -> str:
        """What the vector is computed from: the heading path gives a section its context."""
        return f"{self.heading}\n{self.text}"


def estimate_tokens(text: str) -> int:
    """Words and punctuation marks: close to the WordPiece count for English and code."""
    return len(_TOKEN.findall(text))


def front_matter(text: str) -> tuple[dict[str, object], str]:
    """YAML front matter (``---`` fenced, at the very top) and the body after it."""
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 4)
    if end == -1:
        return {}, text
    import yaml

    try:
        meta = yaml.safe_load(text[4:end]) or {}
    except yaml.YAMLError:
        return {}, text
    body_start = text.find("\n", end + 4)
    return (meta if isinstance(meta, dict) else {}), (text[body_start + 1:] if body_start != -1
                                                      else "")


def _blocks(lines: list[str]) -> list[str]:
    """Paragraphs separated by blank lines; a fenced code block stays one block."""
    blocks: list[str] = []
    current: list[str] = []
    in_fence = False
    for line in lines:
        if _FENCE.match(line):
            if not in_fence and current:
                blocks.append("\n".join(current))
                current = []
            current.append(line)
            in_fence = not in_fence
            if not in_fence:
                blocks.append("\n".join(current))
                current = []
            continue
        if not in_fence and not line.strip():
            if current:
                blocks.append("\n".join(current))
                current = []
            continue
        current.append(line)
    if current:
        blocks.append("\n".join(current))
    return [b for b in blocks if b.strip()]


def _pack(items: list[str], limit: int, joiner: str, per_item: int = 0) -> list[str]:
    """Greedily join consecutive items into parts of at most ``limit`` estimated tokens,
    counting ``per_item`` extra tokens for each (an item over the limit on its own stays
    a part of its own)."""
    parts: list[str] = []
    current: list[str] = []
    size = 0
    for item in items:
        cost = estimate_tokens(item) + per_item
        if current and size + cost > limit:
            parts.append(joiner.join(current))
            current, size = [], 0
        current.append(item)
        size += cost
    if current:
        parts.append(joiner.join(current))
    return parts


def _split_block(block: str, limit: int) -> list[str]:
    """A single block over the limit (a long code listing or log) is cut between lines."""
    return _pack(block.splitlines(), limit, "\n", per_item=1)  # the line break costs one


def split_section(text: str, limit: int = MAX_TOKENS) -> list[str]:
    """Pack a section's paragraphs into parts of at most ``limit`` estimated tokens."""
    text = text.strip()
    if not text:
        return []
    if estimate_tokens(text) <= limit:
        return [text]
    pieces = [piece for block in _blocks(text.splitlines())
              for piece in ([block] if estimate_tokens(block) <= limit
                            else _split_block(block, limit))]
    return _pack(pieces, limit, "\n\n")


def _passages(source: str, path: str, sections: list[tuple[str, str]], tags: tuple[str, ...],
              kind: str, limit: int) -> list[Passage]:
    passages: list[Passage] = []
    for heading, body in sections:
        for part in split_section(body, limit):
            passages.append(Passage(source=source, heading=heading, text=part, tags=tags,
                                    kind=kind, index=len(passages), path=path))
    return passages


def chunk_markdown(source: str, text: str, *, kind: str = "playbook", path: str = "",
                   limit: int = MAX_TOKENS) -> list[Passage]:
    """One passage per ``#``/``##`` section (the title section included), tags from front matter.

    Headings inside fenced code blocks (a Python comment, a shell prompt) are
    text, not sections. Deeper headings (``###``) stay inside their section.
    """
    meta, body = front_matter(text)
    raw_tags = meta.get("tags") or []
    tags = tuple(str(t) for t in raw_tags) if isinstance(raw_tags, list) else ()
    lines = body.splitlines()
    title = str(meta.get("title") or "")
    sections: list[tuple[str | None, list[str]]] = [(None, [])]
    in_fence = False
    for line in lines:
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _MD_HEADING.match(line)
        if match:
            name = match.group(2).strip()
            before_content = not any("".join(body).strip() for _, body in sections)
            if len(match.group(1)) == 1 and before_content:
                title = title or name  # the document's title, not a section of its own
                continue
            sections.append((name, []))
        else:
            sections[-1][1].append(line)
    title = title or PurePath(source).stem
    named = [(title if name is None else f"{title} / {name}", "\n".join(body))
             for name, body in sections]
    return _passages(source, path or source, named, tags, kind, limit)


def chunk_rst(source: str, text: str, *, kind: str = "document", path: str = "",
              limit: int = MAX_TOKENS) -> list[Passage]:
    """reStructuredText: the first titled heading is the title, every later one a section.

    A heading is a line of text underlined (and optionally overlined) by a row
    of one punctuation character at least as long as the text.
    """
    lines = text.splitlines()
    title = ""
    sections: list[tuple[str | None, list[str]]] = [(None, [])]
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        overlined = _RST_ADORNMENT.match(line) and i + 2 < len(lines) and \
            _RST_ADORNMENT.match(lines[i + 2]) and lines[i + 1].strip()
        if overlined:
            name, step = lines[i + 1].strip(), 3
        elif line.strip() and not _RST_ADORNMENT.match(line) and _RST_ADORNMENT.match(nxt) \
                and len(nxt.rstrip()) >= len(line.rstrip()):
            name, step = line.strip(), 2
        else:
            sections[-1][1].append(line)
            i += 1
            continue
        if not title:
            title = name
        else:
            sections.append((name, []))
        i += step
    title = title or PurePath(source).stem
    named = [(title if name is None else f"{title} / {name}", "\n".join(body_lines))
             for name, body_lines in sections]
    return _passages(source, path or source, named, (), kind, limit)


def chunk_text(source: str, text: str, *, kind: str = "document", path: str = "",
               limit: int = MAX_TOKENS) -> list[Passage]:
    """Plain text has no headings: the file name is the heading, paragraphs are packed."""
    return _passages(source, path or source, [(PurePath(source).name, text)], (), kind, limit)


def chunk_file(source: str, text: str, *, kind: str = "document", path: str = "",
               limit: int = MAX_TOKENS) -> list[Passage]:
    """Pick the chunker by file suffix: Markdown, reStructuredText, or plain text."""
    suffix = PurePath(path or source).suffix.lower()
    if suffix in MARKDOWN_SUFFIXES:
        return chunk_markdown(source, text, kind=kind, path=path, limit=limit)
    if suffix in RST_SUFFIXES:
        return chunk_rst(source, text, kind=kind, path=path, limit=limit)
    return chunk_text(source, text, kind=kind, path=path, limit=limit)
