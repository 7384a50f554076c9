"""Text structure the checks reason over: code blocks, prose, sentences, clauses, negation.

Nothing here knows a check; it splits a Markdown draft into the units a claim lives in
(a clause, a table cell with its column header, a code block) and tells whether a
practice named in a clause is proposed or dismissed.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from functools import lru_cache

# A fenced block, possibly indented inside a list item; the closing fence matches its indent.
_CODE_BLOCK = re.compile(r"^([ \t]*)```([\w+#.-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_REFERENCES = re.compile(r"^#{1,6}\s*(sources|references|further reading)\b.*?(?=^#{1,6}\s|\Z)",
                         re.I | re.M | re.S)


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block: its tag (lower case, '' when untagged), code, and index."""

    index: int
    tag: str
    code: str


def fenced_blocks(text: str) -> list[CodeBlock]:
    """Every fenced block, dedented when it sits inside a list item."""
    return list(_fenced_blocks(text))


@lru_cache(maxsize=64)
def _fenced_blocks(text: str) -> tuple[CodeBlock, ...]:
    return tuple(CodeBlock(i, tag.lower(), textwrap.dedent(code))
            for i, (_, tag, code) in enumerate(_CODE_BLOCK.findall(text)))


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block."""
    return [(b.tag, b.code) for b in fenced_blocks(text)]


@lru_cache(maxsize=64)
def prose(text: str) -> str:
    """The text without its code blocks."""
    return _CODE_BLOCK.sub(" ", text)


@lru_cache(maxsize=64)
def claims(text: str) -> str:
    """The prose that proposes things: no code, no inline code, no list of sources."""
    return _INLINE_CODE.sub(" ", _REFERENCES.sub(" ", prose(text)))


@lru_cache(maxsize=64)
def without_references(text: str) -> str:
    return _REFERENCES.sub(" ", text)


def lowered(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """``pattern`` without re.IGNORECASE, for matching lower-cased text (several times faster).

    Letters are lower-cased except in backslash escapes (``\\W`` stays ``\\W``).
    """
    out: list[str] = []
    escaped = False
    for ch in pattern.pattern:
        out.append(ch if escaped else ch.lower())
        escaped = not escaped and ch == "\\"
    return re.compile("".join(out), pattern.flags & ~re.I)


def words(pattern: str) -> re.Pattern[str]:
    """A case-insensitive pattern matched on whole words only ("cut" never inside "execute")."""
    return re.compile(rf"(?<![\w-])(?:{pattern})(?![\w-])", re.I)


# --------------------------------------------------------------------------- sentences

#: sentence ends: ". " / "! " / "? " / a blank line / a list item / a heading / a table row
_SENTENCE_SPLIT = re.compile(
    r"(?<=[.!?])\s+(?=[A-Z`*(\"'])|\n\s*\n|\n(?=\s*(?:[-*+]|\d+[.)])\s)|\n(?=\s*#)|\n(?=\s*\|)")
_CLAUSE_SPLIT = re.compile(r";|\s[—–]\s|,\s*(?:but|while|whereas|although|though)\s|\bbut\b|:\s",
                           re.I)


@dataclass(frozen=True)
class Span:
    text: str
    start: int


def sentences(text: str) -> list[Span]:
    """Sentences of ``text`` with their offsets; a line break inside a paragraph joins."""
    return list(_sentences(text))


@lru_cache(maxsize=256)
def _sentences(text: str) -> tuple[Span, ...]:
    out: list[Span] = []
    pos = 0
    for match in _SENTENCE_SPLIT.finditer(text):
        if match.start() > pos:
            out.append(Span(text[pos:match.start()], pos))
        pos = match.end()
    if pos < len(text):
        out.append(Span(text[pos:], pos))
    split: list[Span] = []
    for span in out:
        # a heading is a sentence of its own, whatever follows it on the next line
        head = re.match(r"\s*#{1,6}[^\n]*\n", span.text)
        if head:
            split.append(Span(span.text[:head.end()], span.start))
            split.append(Span(span.text[head.end():], span.start + head.end()))
        else:
            split.append(span)
    return tuple(s for s in split if s.text.strip())


@lru_cache(maxsize=4096)
def clauses(sentence: str) -> tuple[str, ...]:
    return tuple(c for c in _CLAUSE_SPLIT.split(sentence) if c.strip())


# --------------------------------------------------------------------------- negation

_NEGATION_BEFORE = words(
    r"no|not|never|without|skip|skipping|skipped|drop|dropping|remove|removing|avoid|"
    r"instead of|rather than|no need|don't|do not|doesn't|does not|won't|wouldn't|"
    r"isn't|aren't|leave out|leave .{0,30} out|forgo|forget|neither|nor|"
    r"don’t|won’t|wouldn’t|isn’t|doesn’t|not worth|unnecessary|overkill|out of scope|"
    r"would not|no point|pointless|reject\w*")
_NEGATION_AFTER = words(
    r"overkill|unnecessary|not needed|isn't needed|aren't needed|is not needed|"
    r"not worth\w*|doesn't apply|does not apply|don't apply|do not apply|"
    r"not required|isn't required|can wait|out of scope|not necessary|isn't necessary|"
    r"adds? (?:little|nothing)|won't help|would not help|brittle|noise|not useful|"
    r"leave (?:it|them|monitoring|that) out|(?:is|are|be|was|were|gets?) (?:skipped|dropped|"
    r"removed)|"
    r"isn’t needed|doesn’t apply|not for this")


def proposed_mentions(text: str, pattern: re.Pattern[str]) -> tuple[list[str], list[str]]:
    proposed, dismissed = _proposed_mentions(text, pattern)
    return list(proposed), list(dismissed)


@lru_cache(maxsize=1024)
def _proposed_mentions(text: str, pattern: re.Pattern[str]) -> tuple[tuple[str, ...],
                                                                      tuple[str, ...]]:
    """Clauses where ``pattern`` occurs, split into (proposed, dismissed).

    A mention is dismissed when its clause negates it: a negation before the term in the
    clause ("no need for tracing", "we'll skip CI") or a dismissal after it ("dashboards are
    overkill", "tracing doesn't apply").
    """
    proposed: list[str] = []
    dismissed: list[str] = []
    for sentence in (sentences(text) if "\n" in text or len(text) > 400 else [Span(text, 0)]):
        for clause in clauses(sentence.text):
            for match in pattern.finditer(clause):
                # negation scope: the few words before the term, not across a conjunction
                # or a parenthesis ("keep the spans (no child span) and add a panel")
                before = re.split(r"\)|\band\b|\bthen\b|,", clause[:match.start()])[-1][-45:]
                after = re.split(r"\(|\band\b|,|\bbut\b", clause[match.end():])[0][:45]
                if _NEGATION_BEFORE.search(before) or _NEGATION_AFTER.search(after):
                    dismissed.append(clause.strip())
                else:
                    proposed.append(clause.strip())
                break
    return tuple(proposed), tuple(dismissed)
