"""``explain_query``: explain and time one read-only SQL query, and measure index fixes.

SQLite: ``EXPLAIN QUERY PLAN`` on the database opened read-only, the query
timed (median of several runs, all rows fetched), findings for full scans of
large tables and temp B-tree sorts, and a suggested ``CREATE INDEX`` built
from the query's WHERE and ORDER BY columns. Each suggestion is *measured*:
the database is copied (backup API) to a temp file, the index is created
there, the query is explained and timed again, and the copy is deleted. The
user's database is never written.

PostgreSQL (psycopg 3, imported only when used): ``EXPLAIN (ANALYZE, BUFFERS,
FORMAT JSON)`` in a read-only transaction that is always rolled back, with a
statement timeout; a suggested index is measured by creating it inside a
second transaction, re-running ``EXPLAIN ANALYZE`` and rolling back
(PostgreSQL's DDL is transactional, so nothing is kept).

Only a single SELECT (or WITH ... SELECT, VALUES) is accepted: comments are
stripped and the statement tokenised before any keyword check, so a write
hidden behind a comment or a second statement is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tools.base import (
    Finding,
    Measurement,
    ProgressCallback,
    Target,
    ToolError,
    ToolResult,
    ToolSpec,
    check_target_host,
    resolve_in_workspace,
)

#: A full scan matters above this many rows; above HIGH_ROWS it is severe.
SCAN_ROWS = 1000
HIGH_ROWS = 10_000
#: Repeated timing stops once this much time was spent on it (at least one run).
TIMING_BUDGET_S = 10.0
#: Databases larger than this are not copied to measure an index.
MAX_COPY_BYTES = 2 * 1024**3
SQLITE_HEADER = b"SQLite format 3\x00"

# --------------------------------------------------------------------------- input / result


class QueryInput(BaseModel):
    """The query to explain, and where it runs."""

    model_config = ConfigDict(extra="forbid")

    database: str = Field(
        description="SQLite file path (inside the workspace) or a postgresql:// DSN"
    )
    sql: str = Field(description="one read-only query: SELECT, WITH ... SELECT or VALUES")
    params: list[Any] | dict[str, Any] | None = Field(
        default=None,
        description="values for ? placeholders (a list), or for :name placeholders (an "
        "object); when the query has placeholders and none are given, NULLs are bound",
    )
    measure_indexes: bool = Field(
        default=True,
        description="create each suggested index on a throwaway copy (SQLite) or inside a "
        "rolled-back transaction (PostgreSQL) and time the query again",
    )
    repeat: int = Field(default=5, ge=1, le=50, description="timed runs; the median is reported")
    timeout: float = Field(default=30.0, gt=0, le=600,
                           description="seconds one execution of the query may take")


class PlanRow(BaseModel):
    """One row of SQLite's EXPLAIN QUERY PLAN."""

    id: int
    parent: int
    detail: str


class IndexSuggestion(BaseModel):
    """A suggested index and what it did when it was really built."""

    table: str
    columns: list[str]
    sql: str = Field(description="the CREATE INDEX statement")
    reason: str
    measured: bool = False
    used_by_planner: bool | None = Field(default=None,
                                         description="the plan after mentions the index")
    plan_after: list[str] = Field(default_factory=list)
    time_before_ms: float | None = None
    time_after_ms: float | None = None
    speedup: float | None = Field(default=None, description="time_before / time_after")
    build_ms: float | None = Field(default=None, description="time to create the index")
    note: str | None = None


class QueryResult(ToolResult):
    """The plan, the timing and the measured index suggestions."""

    tool: str = "explain_query"
    engine: Literal["sqlite", "postgresql"]
    database: str = Field(description="the database (a DSN's password is masked)")
    sql: str
    plan: list[PlanRow] = Field(default_factory=list, description="SQLite plan rows")
    plan_text: str = Field(default="", description="the plan as an indented tree")
    plan_json: Any = Field(default=None, description="PostgreSQL: the EXPLAIN JSON plan")
    query_time_ms: float | None = Field(default=None, description="median execution time")
    runs: int = 0
    rows_returned: int | None = None
    table_rows: dict[str, int] = Field(default_factory=dict,
                                       description="row counts of the scanned tables")
    index_suggestions: list[IndexSuggestion] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Tok:
    """A SQL token. ``kind``: word, ident (quoted), string, number, param, op, punct."""

    kind: str
    text: str
    start: int
    end: int

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""

    @property
    def name(self) -> str:
        """An identifier's name: unquoted, as written."""
        if self.kind == "ident":
            inner = self.text[1:-1]
            return inner.replace('""', '"') if self.text[0] == '"' else inner
        return self.text


_WORD = re.compile(r"[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*")
_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|0[xX][0-9a-fA-F]+")
_PARAM = re.compile(r"\?\d*|[:@][A-Za-z_]\w*|\$\d+|\$[A-Za-z_]\w*|%s|%\([A-Za-z_]\w*\)s")
_OPS = ("<=", ">=", "<>", "!=", "==", "||", "::", "->>", "->")


def tokenize(sql: str, dialect: str = "sqlite") -> list[Tok]:
    """Split SQL into tokens, dropping comments; strings and quoted names stay whole.

    Raises ToolError ``sql_error`` on an unterminated string or quoted name,
    which would otherwise hide the rest of the statement from the checks.
    """
    toks: list[Tok] = []
    i, n = 0, len(sql)

    def until(close: str, start: int, doubled: bool) -> int:
        j = start + 1
        while True:
            k = sql.find(close, j)
            if k < 0:
                raise ToolError("sql_error", f"unterminated {close} quote in the query",
                                "close the quote")
            if doubled and sql.startswith(close * 2, k):
                j = k + 2
                continue
            return k + len(close)

    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i):
            k = sql.find("\n", i)
            i = n if k < 0 else k + 1
        elif sql.startswith("/*", i):
            k = sql.find("*/", i + 2)
            i = n if k < 0 else k + 2
        elif c == "'":
            j = until("'", i, True)
            toks.append(Tok("string", sql[i:j], i, j))
            i = j
        elif c in "\"`":
            j = until(c, i, True)
            toks.append(Tok("ident", sql[i:j], i, j))
            i = j
        elif c == "[" and dialect == "sqlite":
            j = until("]", i, False)
            toks.append(Tok("ident", sql[i:j], i, j))
            i = j
        elif c == "$" and dialect == "postgresql" and (m := re.match(r"\$(\w*)\$", sql[i:])):
            tag = m.group(0)  # dollar-quoted string
            k = sql.find(tag, i + len(tag))
            if k < 0:
                raise ToolError("sql_error", f"unterminated {tag} string", "close the string")
            j = k + len(tag)
            toks.append(Tok("string", sql[i:j], i, j))
            i = j
        elif sql.startswith("::", i):
            toks.append(Tok("op", "::", i, i + 2))
            i += 2
        elif (m := _PARAM.match(sql, i)) and not (c == "%" and dialect == "sqlite"):
            toks.append(Tok("param", m.group(0), i, m.end()))
            i = m.end()
        elif (m := _NUMBER.match(sql, i)) and (c.isdigit() or c == "."):
            toks.append(Tok("number", m.group(0), i, m.end()))
            i = m.end()
        elif m := _WORD.match(sql, i):
            toks.append(Tok("word", m.group(0), i, m.end()))
            i = m.end()
        else:
            op = next((o for o in _OPS if sql.startswith(o, i)), c)
            kind = "punct" if op in "(),;." else "op"
            toks.append(Tok(kind, op, i, i + len(op)))
            i += len(op)
    return toks


#: Words that make a statement something other than a pure read. REPLACE is
#: allowed only as the replace() function.
_WRITE_WORDS = {
    "INSERT", "UPDATE", "DELETE", "DROP", "ALTER", "CREATE", "ATTACH", "DETACH", "PRAGMA",
    "VACUUM", "REPLACE", "REINDEX", "TRUNCATE", "MERGE", "GRANT", "REVOKE", "COPY", "INTO",
    "ANALYZE", "UPSERT",
}
_READ_STARTS = {"SELECT", "WITH", "VALUES"}
#: Functions with side effects a read-only transaction does not stop (or that
#: read server files); refused by name, in either database.
_UNSAFE_FUNCTIONS = {
    "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import",
    "lo_export", "pg_promote", "pg_switch_wal", "pg_notify", "dblink", "dblink_exec",
    "pg_advisory_lock", "pg_advisory_xact_lock", "load_extension", "writefile", "readfile",
}


def read_only_statement(sql: str, dialect: str) -> list[Tok]:
    """The tokens of ``sql`` if it is one read-only query; ToolError ``not_read_only`` if not.

    A leading EXPLAIN (QUERY PLAN / ANALYZE / options) is dropped: the tool
    adds its own, and the query under it must pass the same test.
    """
    toks = tokenize(sql, dialect)
    while toks and toks[-1].text == ";":
        toks.pop()
    if not toks:
        raise ToolError("sql_error", "the query is empty", "give one SELECT statement")
    if any(t.text == ";" for t in toks):
        raise ToolError("not_read_only", "the query holds more than one statement",
                        "explain_query takes a single read-only SELECT")

    def refuse(why: str) -> ToolError:
        return ToolError("not_read_only", f"refused: {why}",
                         "explain_query runs only a single SELECT / WITH ... SELECT / "
                         "VALUES; it never modifies the database")

    # Drop a leading EXPLAIN [QUERY PLAN | ANALYZE | VERBOSE | (options)].
    if toks[0].upper == "EXPLAIN":
        toks = toks[1:]
        if toks and toks[0].text == "(":
            depth = 0
            for k, t in enumerate(toks):
                depth += (t.text == "(") - (t.text == ")")
                if depth == 0:
                    toks = toks[k + 1:]
                    break
        while toks and toks[0].upper in {"QUERY", "PLAN", "ANALYZE", "ANALYSE", "VERBOSE"}:
            toks = toks[1:]
    if not toks:
        raise ToolError("sql_error", "nothing to explain after EXPLAIN", "give a SELECT")
    first = next((t for t in toks if t.text != "("), toks[0])
    if first.upper not in _READ_STARTS:
        raise refuse(f"the statement starts with {first.text!r}, not SELECT/WITH/VALUES")
    for k, t in enumerate(toks):
        word = t.upper
        if word in _WRITE_WORDS:
            if word == "REPLACE" and k + 1 < len(toks) and toks[k + 1].text == "(":
                continue  # the replace(text, from, to) function
            raise refuse(f"the query contains {t.text!r}")
        if (t.kind == "word" and t.text.lower() in _UNSAFE_FUNCTIONS and k + 1 < len(toks)
                and toks[k + 1].text == "("):
            raise refuse(f"the query calls {t.text}(), which acts outside the query")
        if word == "FOR" and k + 1 < len(toks) and toks[k + 1].upper in {"UPDATE", "SHARE",
                                                                         "NO", "KEY"}:
            raise refuse("SELECT ... FOR UPDATE/SHARE takes row locks")
    return toks


def placeholders(toks: list[Tok]) -> list[str]:
    """The placeholder tokens in order of appearance."""
    return [t.text for t in toks if t.kind == "param"]


# --------------------------------------------------------------------------- SQL shape


_CLAUSE_WORDS = {"WHERE", "GROUP", "HAVING", "ORDER", "LIMIT", "WINDOW", "UNION", "INTERSECT",
                 "EXCEPT", "OFFSET", "FETCH", "FOR", "RETURNING"}
_JOIN_WORDS = {"JOIN", "INNER", "LEFT", "RIGHT", "FULL", "OUTER", "CROSS", "NATURAL", "ON",
               "USING", "LATERAL"}


@dataclass
class QueryShape:
    """What a simple query filters and sorts on, per table reference."""

    tables: dict[str, str]  # alias or name (lower) -> table name as written
    conditions: list[tuple[str | None, str, str]]  # (qualifier, column, "eq" | "range")
    order_by: list[tuple[str | None, str, str]] | None  # (qualifier, column, ASC|DESC)
    group_by: list[tuple[str | None, str]] | None
    compound: bool
    #: column = column pairs from ON and WHERE: ((qual, col), (qual, col))
    joins: list[tuple[tuple[str | None, str], tuple[str | None, str]]] = field(
        default_factory=list)


def _depths(toks: list[Tok]) -> list[int]:
    depth, out = 0, []
    for t in toks:
        if t.text == ")":
            depth -= 1
        out.append(depth)
        if t.text == "(":
            depth += 1
    return out


def _colref(toks: list[Tok]) -> tuple[str | None, str] | None:
    """``col`` or ``qual.col`` as (qualifier, column); None for anything else."""
    names = [t for t in toks if t.kind in ("word", "ident")]
    if len(toks) == 1 and names:
        return None, toks[0].name
    if (len(toks) == 3 and toks[1].text == "." and toks[0].kind in ("word", "ident")
            and toks[2].kind in ("word", "ident")):
        return toks[0].name, toks[2].name
    return None


_NOT_COLUMNS = {"NULL", "TRUE", "FALSE", "CURRENT_DATE", "CURRENT_TIME", "CURRENT_TIMESTAMP",
                "AND", "OR", "NOT", "CAST", "AS", "CASE", "WHEN", "THEN", "ELSE", "END",
                "INTERVAL", "IS", "IN", "LIKE", "ESCAPE", "COLLATE", "DATE", "TIMESTAMP"}


def _refs_columns(toks: list[Tok]) -> bool:
    """True when an expression may read a column (so it is not a constant to compare to)."""
    for k, t in enumerate(toks):
        if t.kind == "ident":
            return True
        if t.kind == "word" and t.upper not in _NOT_COLUMNS:
            called = k + 1 < len(toks) and toks[k + 1].text == "("
            typed = k > 0 and toks[k - 1].text == "::"
            if not called and not typed:
                return True
    return False


def _split_top(toks: list[Tok], word: str) -> list[list[Tok]]:
    """Split at depth-0 occurrences of ``word`` (BETWEEN's own AND kept together)."""
    parts: list[list[Tok]] = [[]]
    depth = 0
    between = False
    for t in toks:
        if t.text == "(":
            depth += 1
        elif t.text == ")":
            depth -= 1
        if depth == 0 and t.upper == "BETWEEN":
            between = True
        if depth == 0 and t.upper == word:
            if word == "AND" and between:
                between = False
            else:
                parts.append([])
                continue
        parts[-1].append(t)
    return [p for p in parts if p]


def _condition(toks: list[Tok]) -> tuple[str | None, str, str] | None:
    """(qualifier, column, eq|range) when a conjunct compares one column to a constant."""
    if not toks or toks[0].upper == "NOT" or any(t.upper == "OR" for t in _top_level(toks)):
        return None
    top = _top_level(toks)
    for k, t in enumerate(toks):
        if t not in top:
            continue
        word = t.upper
        text = t.text
        if text in ("=", "==", "<", "<=", ">", ">=") or word in ("IN", "BETWEEN", "IS"):
            left, right = toks[:k], toks[k + 1:]
            kind = "eq" if text in ("=", "==") or word in ("IN", "IS") else "range"
            if word == "IS" and right and right[0].upper == "NOT":
                return None
            if word == "IN" and k > 0 and toks[k - 1].upper == "NOT":
                return None
            ref = _colref(left)
            if ref is not None and not _refs_columns(right):
                return ref[0], ref[1], kind
            if word not in ("IN", "BETWEEN", "IS"):
                ref = _colref(right)
                if ref is not None and not _refs_columns(left):
                    return ref[0], ref[1], kind
            return None
    return None


def _top_level(toks: list[Tok]) -> list[Tok]:
    depths = _depths(toks)
    return [t for t, d in zip(toks, depths, strict=True) if d == 0 and t.text not in "()"]


def query_shape(toks: list[Tok]) -> QueryShape | None:
    """Tables, filter columns and sort columns of the outermost SELECT; None if unsure."""
    depths = _depths(toks)
    top = [k for k, d in enumerate(depths) if d == 0]
    start = next((k for k in top if toks[k].upper == "SELECT"), None)
    if start is None:
        return None
    words = [(k, toks[k].upper) for k in top if k >= start]
    compound = any(w in ("UNION", "INTERSECT", "EXCEPT") for _, w in words)

    def clause(name: str, after: str | None = None) -> list[Tok] | None:
        for idx, (k, w) in enumerate(words):
            if w == name and (after is None or (idx + 1 < len(words)
                                                and words[idx + 1][1] == after)):
                first = k + (2 if after else 1)
                end = next((k2 for k2, w2 in words if k2 >= first and w2 in _CLAUSE_WORDS
                            and not (w2 == "ORDER" and name == "ORDER")), len(toks))
                return toks[first:end]
        return None

    from_toks = clause("FROM")
    tables: dict[str, str] = {}
    if from_toks:
        fdepth = _depths(from_toks)
        expect_table = True
        k = 0
        while k < len(from_toks):
            t = from_toks[k]
            if fdepth[k] == 0 and (t.text == "," or t.upper == "JOIN"):
                expect_table = True
            elif fdepth[k] == 0 and expect_table and t.kind in ("word", "ident") \
                    and t.upper not in _JOIN_WORDS:
                name = t.name
                if k + 2 < len(from_toks) and from_toks[k + 1].text == ".":
                    k += 2  # schema.table: keep the table
                    name = from_toks[k].name
                alias = None
                nxt = k + 1
                if nxt < len(from_toks) and from_toks[nxt].upper == "AS":
                    nxt += 1
                if nxt < len(from_toks) and from_toks[nxt].kind in ("word", "ident") \
                        and from_toks[nxt].upper not in _JOIN_WORDS | {"INDEXED", "NOT"}:
                    alias = from_toks[nxt].name
                    k = nxt
                tables[name.lower()] = name
                if alias:
                    tables[alias.lower()] = name
                expect_table = False
            elif fdepth[k] == 0 and t.text == "(":
                expect_table = False  # a subquery: its alias maps to no table
            k += 1

    conditions: list[tuple[str | None, str, str]] = []
    joins: list[tuple[tuple[str | None, str], tuple[str | None, str]]] = []
    where = clause("WHERE")
    for part in _split_top(where or [], "AND"):
        cond = _condition(part)
        if cond is not None:
            conditions.append(cond)
        elif (pair := _join_pair(part)) is not None:
            joins.append(pair)
    for on in _on_clauses(from_toks or []):
        for part in _split_top(on, "AND"):
            if (pair := _join_pair(part)) is not None:
                joins.append(pair)

    order_by: list[tuple[str | None, str, str]] | None = None
    order = clause("ORDER", "BY")
    if order:
        order_by = []
        for item in _split_top(order, ","):
            direction = "ASC"
            if item and item[-1].upper in ("ASC", "DESC"):
                direction = item[-1].upper
                item = item[:-1]
            ref = _colref(item)
            if ref is None:
                order_by = None
                break
            order_by.append((ref[0], ref[1], direction))

    group_by: list[tuple[str | None, str]] | None = None
    group = clause("GROUP", "BY")
    if group:
        group_by = []
        for item in _split_top(group, ","):
            ref = _colref(item)
            if ref is None:
                group_by = None
                break
            group_by.append(ref)
    return QueryShape(tables, conditions, order_by, group_by, compound, joins)


def _join_pair(toks: list[Tok]) -> tuple[tuple[str | None, str], tuple[str | None, str]] | None:
    """``a.x = b.y`` as ((a, x), (b, y)); None for anything else."""
    top = _top_level(toks)
    eq = [k for k, t in enumerate(toks) if t in top and t.text in ("=", "==")]
    if len(eq) != 1:
        return None
    left, right = _colref(toks[: eq[0]]), _colref(toks[eq[0] + 1:])
    if left is None or right is None:
        return None
    return left, right


def _on_clauses(from_toks: list[Tok]) -> list[list[Tok]]:
    """The token runs after each depth-0 ON in a FROM clause."""
    depths = _depths(from_toks)
    runs: list[list[Tok]] = []
    current: list[Tok] | None = None
    for t, d in zip(from_toks, depths, strict=True):
        if d == 0 and t.upper == "ON":
            current = []
            runs.append(current)
        elif d == 0 and (t.upper in _JOIN_WORDS - {"ON"} or t.text == ","):
            current = None
        elif current is not None:
            current.append(t)
    return runs


def _safe_shape(toks: list[Tok]) -> QueryShape | None:
    """``query_shape``, but a query beyond the simple reader only loses the suggestion."""
    try:
        return query_shape(toks)
    except (IndexError, ValueError, KeyError):
        return None


def _quote(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def suggest_index(shape: QueryShape | None, table: str, ref_name: str,
                  columns_of: Callable[[str], list[str]]) -> list[tuple[list[str], str]]:
    """Candidate index columns for ``table`` (referred to as ``ref_name``), with reasons.

    Equality columns first, then one range column, else the ORDER BY (or
    GROUP BY) columns, so one index serves both the filter and the sort.
    When a range filter and a sort compete, both variants are returned: the
    caller measures them rather than guessing. A table filtered by nothing
    but a join gets an index on its join column. Empty when the query is
    beyond this simple reading.
    """
    if shape is None or shape.compound:
        return []
    own = {c.lower(): c for c in columns_of(table)}
    others = [t for key, t in shape.tables.items() if t.lower() != table.lower()]
    other_cols = {c.lower() for t in set(others) for c in columns_of(t)}
    refs = {ref_name.lower(), table.lower()}

    def mine(qual: str | None, col: str) -> str | None:
        if qual is not None:
            return own.get(col.lower()) if qual.lower() in refs else None
        if col.lower() in own and col.lower() not in other_cols:
            return own[col.lower()]
        return None

    eq: list[str] = []
    rng: list[str] = []
    for qual, col, kind in shape.conditions:
        name = mine(qual, col)
        if name is not None:
            (eq if kind == "eq" else rng).append(name)
    eq = list(dict.fromkeys(eq))
    where = f"WHERE {', '.join(eq)} (equality)" if eq else ""

    sort_cols: list[str] | None = None
    if shape.order_by:
        sort = [(mine(q, c), d) for q, c, d in shape.order_by]
        if all(n is not None for n, _ in sort):
            mixed = len({d for _, d in sort}) > 1
            sort_cols = [f"{n} DESC" if mixed and d == "DESC" else str(n) for n, d in sort]

    def extend(base: list[str], more: list[str]) -> list[str]:
        return base + [c for c in more if c.split()[0] not in base]

    def why(*parts: str) -> str:
        return "; ".join(p for p in parts if p)

    candidates: list[tuple[list[str], str]] = []
    if rng:
        candidates.append((extend(eq, [rng[0]]), why(where, f"WHERE {rng[0]} (range)")))
        if sort_cols:
            candidates.append((extend(eq, sort_cols),
                               why(where, f"ORDER BY {', '.join(sort_cols)}")))
    elif sort_cols:
        candidates.append((extend(eq, sort_cols), why(where, f"ORDER BY {', '.join(sort_cols)}")))
    elif shape.group_by and not eq:
        grouped = [mine(q, c) for q, c in shape.group_by]
        if all(grouped):
            cols = [g for g in grouped if g]
            candidates.append((cols, f"GROUP BY {', '.join(cols)}"))
    if not candidates and eq:
        candidates.append((eq, where))
    if not candidates:
        for left, right in shape.joins:
            for this, that in ((left, right), (right, left)):
                name = mine(*this)
                if name is not None and mine(*that) is None:
                    candidates.append(([name], f"JOIN on {table}.{name}"))
                    break
            if candidates:
                break
    return candidates


def _index_sql(table: str, cols: list[str]) -> tuple[str, str]:
    plain = [c.split()[0] for c in cols]
    name = "idx_" + "_".join(re.sub(r"\W+", "_", p.lower()) for p in [table, *plain])
    body = ", ".join(_quote(c.split()[0]) + (" DESC" if c.endswith(" DESC") else "")
                     for c in cols)
    return name[:60], f"CREATE INDEX {_quote(name[:60])} ON {_quote(table)} ({body})"


# --------------------------------------------------------------------------- SQLite


_PLAN_SCAN = re.compile(r"^(?P<verb>SCAN|SEARCH) (?:TABLE )?(?P<name>\S+)(?: AS (?P<alias>\S+))?"
                        r"(?P<rest>.*)$")
_AUTO_INDEX = re.compile(r"USING AUTOMATIC (?:PARTIAL )?(?:COVERING )?INDEX \((?P<cols>[^)]*)\)")


def plan_tree(rows: list[PlanRow]) -> str:
    """The plan as the sqlite3 shell draws it."""
    children: dict[int, list[PlanRow]] = {}
    for row in rows:
        children.setdefault(row.parent, []).append(row)
    lines = ["QUERY PLAN"]

    def walk(parent: int, prefix: str) -> None:
        kids = children.get(parent, [])
        for i, row in enumerate(kids):
            last = i == len(kids) - 1
            lines.append(f"{prefix}{'`--' if last else '|--'}{row.detail}")
            if row.id != parent:
                walk(row.id, prefix + ("   " if last else "|  "))

    walk(0, "")
    return "\n".join(lines)


def _bind(toks: list[Tok], params: list[Any] | dict[str, Any] | None,
          notes: list[str]) -> list[Any] | dict[str, Any]:
    """The parameters to bind: the given ones, or NULLs for every placeholder."""
    marks = placeholders(toks)
    if params is not None:
        return params
    if not marks:
        return []
    notes.append(f"the query has {len(marks)} placeholder(s) and no params were given: "
                 "NULL was bound to each, so the timing reflects a lookup that matches "
                 "nothing; pass params for representative numbers")
    named = [m[1:] for m in marks if m[0] in ":@$" and not m[1:].isdigit()]
    if named:
        return dict.fromkeys(named)
    numbered = [int(m[1:]) for m in marks if len(m) > 1 and m[1:].isdigit()]
    values: list[Any] = [None] * max([len(marks), *numbered])
    if not numbered:
        # LIMIT NULL is a type error, so a row cap gets a number instead: a page of
        # 100 rows from offset 0, which is what a typical list endpoint asks for.
        for index, previous in enumerate(_word_before_params(toks)):
            if previous == "LIMIT":
                values[index] = 100
            elif previous == "OFFSET":
                values[index] = 0
    return values


def _word_before_params(toks: list[Tok]) -> list[str]:
    """For each placeholder, the upper-cased token right before it."""
    return [toks[i - 1].text.upper() if i else "" for i, t in enumerate(toks)
            if t.kind == "param"]


def _deny_writes() -> Callable[..., int]:
    """A SQLite authorizer that refuses anything but reading (defence in depth)."""
    import sqlite3

    denied = {getattr(sqlite3, n) for n in dir(sqlite3) if n.startswith((
        "SQLITE_CREATE", "SQLITE_DROP", "SQLITE_INSERT", "SQLITE_DELETE", "SQLITE_ATTACH",
        "SQLITE_DETACH", "SQLITE_ALTER", "SQLITE_REINDEX", "SQLITE_ANALYZE",
        "SQLITE_TRANSACTION", "SQLITE_SAVEPOINT"))}
    read_pragmas = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
                    "foreign_key_list", "table_list", "database_list", "function_list"}

    def authorize(action: int, arg1: str | None, _arg2: str | None, _db: str | None,
                  _trigger: str | None) -> int:
        if action in denied:
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_UPDATE and (arg1 or "") not in ("sqlite_master",
                                                                    "sqlite_temp_master"):
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() not in read_pragmas:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    return authorize


class _Deadline:
    """Aborts a running SQLite statement once its time is up (progress handler)."""

    def __init__(self, conn: Any, seconds: float) -> None:
        self.conn, self.seconds, self.expires = conn, seconds, float("inf")

    def __enter__(self) -> _Deadline:
        self.expires = time.perf_counter() + self.seconds
        self.conn.set_progress_handler(lambda: int(time.perf_counter() > self.expires), 10_000)
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.set_progress_handler(None, 0)


def _time_query(conn: Any, sql: str, params: Any, repeat: int,
                timeout: float) -> tuple[float, int, int]:
    """Median ms over up to ``repeat`` runs (fetching every row); (median, rows, runs)."""
    import sqlite3

    times: list[float] = []
    rows = 0
    spent_from = time.perf_counter()
    for _ in range(repeat):
        try:
            with _Deadline(conn, timeout):
                t0 = time.perf_counter()
                rows = len(conn.execute(sql, params).fetchall())
                times.append((time.perf_counter() - t0) * 1000)
        except sqlite3.OperationalError as exc:
            if "interrupted" in str(exc):
                raise ToolError("timeout", f"the query ran longer than {timeout:g} s",
                                "raise timeout, or add a LIMIT while investigating") from None
            raise
        if time.perf_counter() - spent_from > TIMING_BUDGET_S:
            break
    return statistics.median(times), rows, len(times)


def _explain(conn: Any, sql: str, params: Any) -> list[PlanRow]:
    return [PlanRow(id=r[0], parent=r[1], detail=r[3])
            for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()]


def _read_only_uri(path: Path) -> str:
    """A read-only SQLite URI for the user's database that leaves nothing beside it.

    A read-only connection to a database in WAL mode still creates its ``-wal``
    and ``-shm`` files and cannot remove them when it closes. When no other
    connection has them open (no ``-wal`` file exists, so every change is in
    the main file), ``immutable=1`` reads the file as it is, without them.
    When they exist, a writer is at work and the files are its own.
    """
    from urllib.parse import quote

    uri = f"file:{quote(str(path))}?mode=ro"
    with path.open("rb") as fh:
        header = fh.read(20)
    in_wal_mode = len(header) == 20 and header[18] == 2  # file format versions: 2 is WAL
    if in_wal_mode and not Path(f"{path}-wal").exists():
        uri += "&immutable=1"
    return uri


def _sqlite_run(inp: QueryInput, report: Callable[[float, str], None]) -> QueryResult:
    import sqlite3

    path = resolve_in_workspace(inp.database)
    if not path.is_file():
        raise ToolError("not_found", f"{inp.database} is not a file",
                        "give the path of a SQLite database file")
    with path.open("rb") as fh:
        header = fh.read(16)
    if header != SQLITE_HEADER:
        raise ToolError("invalid_database", f"{inp.database} is not a SQLite database",
                        "give a SQLite file, or a postgresql:// DSN for PostgreSQL")
    toks = read_only_statement(inp.sql, "sqlite")
    sql = inp.sql[toks[0].start:toks[-1].end]  # drop a leading EXPLAIN and trailing ';'
    notes: list[str] = []
    params = _bind(toks, inp.params, notes)

    conn = sqlite3.connect(_read_only_uri(path), uri=True, check_same_thread=False)
    try:
        conn.set_authorizer(_deny_writes())
        try:
            report(0.1, "explaining the query plan")
            plan = _explain(conn, sql, params)
            report(0.2, "timing the query")
            median_ms, rows, runs = _time_query(conn, sql, params, inp.repeat, inp.timeout)
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise ToolError("invalid_database", f"{inp.database}: {exc}",
                                "the file is damaged or not a SQLite database") from None
            raise ToolError("sql_error", f"SQLite refused the query: {exc}",
                            "fix the SQL (table and column names, syntax) and try again"
                            ) from None
        conn.set_authorizer(None)
        shape = _safe_shape(toks)
        findings, suggestions, table_rows = _sqlite_findings(conn, plan, shape, inp.timeout)
    finally:
        conn.close()

    target = sql
    measurements = [Measurement(name="query_time", value=round(median_ms, 4), unit="ms",
                                source="explain_query", target=target)]
    if suggestions and inp.measure_indexes:
        size = path.stat().st_size
        if size > MAX_COPY_BYTES:
            notes.append(f"the database is {size / 1024**3:.1f} GiB: indexes were not "
                         "measured on a copy; try them on a staging copy")
        else:
            _measure_on_copy(path, sql, params, suggestions, inp, report)
            _settle(findings, suggestions)
            measurements += _best_index_time(suggestions, target)

    summary = [f"{_short(sql)}: median {median_ms:.2f} ms over {runs} runs, {rows} rows"]
    scans = [f for f in findings if f.kind == "full_scan"]
    if scans:
        summary.append("; ".join(f.summary for f in scans[:2]))
    for s in suggestions[:1]:
        if s.speedup is not None:
            summary.append(f"{s.sql}: {s.time_before_ms:.2f} -> {s.time_after_ms:.2f} ms "
                           f"({s.speedup:.1f}x)")
        else:
            summary.append(f"suggested: {s.sql}")
    return QueryResult(
        engine="sqlite", database=str(path), sql=sql, plan=plan, plan_text=plan_tree(plan),
        query_time_ms=round(median_ms, 4), runs=runs, rows_returned=rows,
        table_rows=table_rows, index_suggestions=suggestions, findings=findings,
        measurements=measurements, notes=notes, summary="\n".join(summary[:3]))


def _best_index_time(suggestions: list[IndexSuggestion], target: str) -> list[Measurement]:
    """The query time with the fastest measured index, as a measurement (none measured: [])."""
    timed = [s for s in suggestions if s.time_after_ms is not None]
    if not timed:
        return []
    best = min(timed, key=lambda s: s.time_after_ms or 0.0)
    return [Measurement(name="query_time_with_index", value=round(best.time_after_ms or 0.0, 4),
                        unit="ms", source="explain_query", target=f"{target} + {best.sql}")]


def _settle(findings: list[Finding], suggestions: list[IndexSuggestion]) -> None:
    """Put the measured outcome on each suggestion's finding; best suggestion first."""
    for s in suggestions:
        if not s.measured or s.speedup is None:
            continue
        if s.speedup < 1.1 and s.note is None:
            s.note = "no measurable gain for this query: do not add this index for it"
        for f in findings:
            if f.kind == "missing_index" and s.sql in f.summary:
                f.evidence = (f"{f.evidence}; " if f.evidence else "") + (
                    f"measured: {s.time_before_ms} -> {s.time_after_ms} ms ({s.speedup}x)")
                if s.speedup < 1.1:
                    f.severity = "low"
    suggestions.sort(key=lambda s: -(s.speedup or 0.0))


def _short(sql: str, width: int = 60) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _sqlite_findings(conn: Any, plan: list[PlanRow], shape: QueryShape | None,
                     timeout: float) -> tuple[list[Finding], list[IndexSuggestion],
                                              dict[str, int]]:
    """full_scan, temp_sort and missing_index findings from the plan rows."""
    import sqlite3

    real_tables = {r[0].lower(): r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    columns: dict[str, list[str]] = {}

    def columns_of(table: str) -> list[str]:
        key = table.lower()
        if key not in columns:
            columns[key] = [r[1] for r in conn.execute(
                f"SELECT * FROM pragma_table_info({_sql_literal(table)})")]
        return columns[key]

    def resolve(name: str) -> str | None:
        mapped = shape.tables.get(name.lower()) if shape else None
        candidate = mapped or name
        return real_tables.get(candidate.lower())

    row_counts: dict[str, int] = {}

    def count(table: str) -> int:
        if table not in row_counts:
            try:
                with _Deadline(conn, timeout):
                    row_counts[table] = conn.execute(
                        f"SELECT count(*) FROM {_quote_always(table)}").fetchone()[0]
            except sqlite3.OperationalError:
                # Counting a huge table took too long: the largest rowid is a
                # cheap upper bound, and the table is large either way.
                row_counts[table] = int(conn.execute(
                    f"SELECT coalesce(max(rowid), 0) FROM {_quote_always(table)}").fetchone()[0])
        return row_counts[table]

    findings: list[Finding] = []
    suggestions: list[IndexSuggestion] = []
    seen_index: set[str] = set()
    for row in plan:
        detail = row.detail
        if detail.startswith("USE TEMP B-TREE FOR"):
            what = detail.removeprefix("USE TEMP B-TREE FOR ").strip()
            findings.append(Finding(
                kind="temp_sort", severity="medium",
                summary=f"SQLite builds a temporary B-tree for {what} on every run",
                location=detail,
                evidence="an index whose columns match the sort or grouping lets SQLite "
                         "read rows in order"))
            continue
        match = _PLAN_SCAN.match(detail)
        if not match:
            continue
        ref = match.group("alias") or match.group("name")
        table = resolve(ref) or resolve(match.group("name"))
        if table is None:
            continue  # a CTE, a subquery or a view: not an index question
        rest = match.group("rest")
        auto = _AUTO_INDEX.search(rest)
        if auto:
            cols = [c.split("=")[0].split(">")[0].split("<")[0].strip()
                    for c in auto.group("cols").split(" AND ") if c.strip()]
            cols = [c for c in cols if c in {x for x in columns_of(table)}]
            if cols:
                name, sql = _index_sql(table, cols)
                if name not in seen_index:
                    seen_index.add(name)
                    reason = "SQLite builds an automatic index on every run"
                    suggestions.append(IndexSuggestion(table=table, columns=cols, sql=sql,
                                                       reason=reason))
                    findings.append(Finding(
                        kind="missing_index", severity="high",
                        summary=f"no index on {table}({', '.join(cols)}): {reason}; "
                                f"suggested: {sql}",
                        location=table, evidence=detail))
            continue
        if match.group("verb") != "SCAN" or "USING" in rest or "VIRTUAL TABLE" in rest:
            continue
        rows = count(table)
        if rows <= SCAN_ROWS:
            continue
        findings.append(Finding(
            kind="full_scan", severity="high" if rows > HIGH_ROWS else "medium",
            summary=f"full scan of {table} ({rows} rows)",
            location=table, evidence=detail))
        scan_finding = findings[-1]
        for cols, reason in suggest_index(shape, table, ref, columns_of):
            if _existing_prefix(conn, table, cols):
                scan_finding.summary += (f"; an index on ({', '.join(cols)}) exists but the "
                                         "planner did not use it (run ANALYZE?)")
                continue
            name, sql = _index_sql(table, cols)
            if name in seen_index:
                continue
            seen_index.add(name)
            suggestions.append(IndexSuggestion(table=table, columns=cols, sql=sql,
                                               reason=reason))
            findings.append(Finding(
                kind="missing_index", severity="high" if rows > HIGH_ROWS else "medium",
                summary=f"{table} is scanned for {reason}; suggested: {sql}",
                location=table, evidence=detail))
    return findings, suggestions, row_counts


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _quote_always(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _existing_prefix(conn: Any, table: str, cols: list[str]) -> bool:
    """True when an index on ``table`` already starts with ``cols``."""
    wanted = [c.split()[0].lower() for c in cols]
    for idx in conn.execute(f"SELECT name FROM pragma_index_list({_sql_literal(table)})"):
        have = [r[2].lower() for r in conn.execute(
            f"SELECT * FROM pragma_index_info({_sql_literal(idx[0])}) ORDER BY seqno")
            if r[2] is not None]
        if have[: len(wanted)] == wanted:
            return True
    return False


def _measure_on_copy(path: Path, sql: str, params: Any, suggestions: list[IndexSuggestion],
                     inp: QueryInput, report: Callable[[float, str], None]) -> None:
    """Create each suggested index on a temp copy and time the query before and after."""
    import shutil
    import sqlite3

    from tools.process import ScratchDir

    with ScratchDir("perfagent-explain-") as tmp:
        if shutil.disk_usage(tmp).free < path.stat().st_size * 2:
            for s in suggestions:
                s.note = "not measured: too little free disk space for a copy"
            return
        copy = Path(tmp) / "copy.sqlite"
        report(0.4, "copying the database to measure the suggested index")
        src = sqlite3.connect(_read_only_uri(path), uri=True)
        dst = sqlite3.connect(str(copy), check_same_thread=False)
        try:
            src.backup(dst)
            src.close()
            for i, s in enumerate(suggestions):
                report(0.5 + 0.5 * i / len(suggestions), f"measuring {s.sql}")
                try:
                    before, _, _ = _time_query(dst, sql, params, inp.repeat, inp.timeout)
                    t0 = time.perf_counter()
                    dst.execute(s.sql)
                    s.build_ms = round((time.perf_counter() - t0) * 1000, 3)
                    after_plan = _explain(dst, sql, params)
                    after, _, _ = _time_query(dst, sql, params, inp.repeat, inp.timeout)
                    index_name = s.sql.split()[2].strip('"')
                    s.plan_after = [r.detail for r in after_plan]
                    s.used_by_planner = any(
                        re.search(rf"\bINDEX {re.escape(index_name)}\b", r.detail)
                        for r in after_plan)
                    s.time_before_ms = round(before, 4)
                    s.time_after_ms = round(after, 4)
                    s.speedup = round(before / after, 2) if after > 0 else None
                    s.measured = True
                    if not s.used_by_planner:
                        s.note = "the planner did not use this index; it does not help"
                    dst.execute(f"DROP INDEX {s.sql.split()[2]}")
                except (sqlite3.Error, ToolError) as exc:
                    s.note = f"could not measure: {exc}"
        finally:
            dst.close()
            with contextlib.suppress(Exception):
                src.close()


# --------------------------------------------------------------------------- PostgreSQL


def _is_postgres(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://")) or bool(
        re.search(r"(^|\s)(dbname|host)=", database))


def _mask(dsn: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", re.sub(r"(password=)\S+", r"\1***", dsn))


def _pg_sql(sql: str, toks: list[Tok], params: list[Any] | dict[str, Any]
            ) -> tuple[str, list[Any] | dict[str, Any]]:
    """Rewrite ?, ?n, $n and :name placeholders for psycopg (%s, %(name)s).

    psycopg reads every % in the text as a placeholder marker, so literal %
    signs (in strings, LIKE patterns, the modulo operator) are doubled.
    """
    out: list[str] = []
    bound: list[Any] = []
    positional = params if isinstance(params, list) else []
    pos = qmarks = 0

    def take(index: int) -> None:
        bound.append(positional[index] if index < len(positional) else None)

    for t in toks:
        out.append(sql[pos:t.start].replace("%", "%%"))
        pos = t.end
        if t.kind != "param":
            out.append(t.text.replace("%", "%%"))
        elif t.text in ("?", "%s"):
            out.append("%s")
            take(qmarks)
            qmarks += 1
        elif t.text[0] in "?$" and t.text[1:].isdigit():
            out.append("%s")
            take(int(t.text[1:]) - 1)
        elif t.text.startswith("%("):
            out.append(t.text)
        else:
            out.append(f"%({t.text[1:]})s")
    out.append(sql[pos:].replace("%", "%%"))
    return "".join(out), (params if isinstance(params, dict) else bound)


def _pg_dollar(sql: str, toks: list[Tok]) -> tuple[str, int]:
    """The query with $n placeholders (for PREPARE), and how many there are."""
    out: list[str] = []
    numbers: dict[str, int] = {}
    pos = qmarks = 0
    for t in toks:
        out.append(sql[pos:t.start])
        pos = t.end
        if t.kind != "param":
            out.append(t.text)
            continue
        if t.text in ("?", "%s"):
            qmarks += 1
            key = f"#{qmarks}"
        elif t.text[0] in "?$" and t.text[1:].isdigit():
            key = f"#{int(t.text[1:])}"
        else:
            key = t.text[2:-2] if t.text.startswith("%(") else t.text[1:]
        if key not in numbers:
            numbers[key] = int(key[1:]) if key.startswith("#") else len(numbers) + 1
        out.append(f"${numbers[key]}")
    out.append(sql[pos:])
    return "".join(out), max(numbers.values(), default=0)


#: Connection parameters that move the target to a file's say (a service entry),
#: so the DSN alone would not show where libpq connects.
_PG_HIDDEN_TARGET = ("service", "servicefile")


def _pg_pinned_dsn(dsn: str) -> str:
    """The DSN with every server it names checked and pinned to its checked address.

    libpq connects to ``hostaddr`` when one is given (``host`` then only names
    the server for TLS and the password file), tries each of several
    comma-separated hosts in turn, and would resolve a name again when it
    connects. So every host and every hostaddr is checked against the
    network-tool rule (loopback or ``PERFAGENT_ALLOWED_HOSTS``), and each name
    gets the address it was checked at as its ``hostaddr``. Unix sockets are
    local by definition.
    """
    import psycopg

    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ToolError("invalid_database", f"not a valid PostgreSQL DSN: {exc}",
                        "write it as postgresql://user@127.0.0.1:5432/dbname") from None
    hidden = [key for key in _PG_HIDDEN_TARGET if info.get(key)]
    if hidden:
        raise ToolError("invalid_database",
                        f"the DSN names its server through {hidden[0]}=, which explain_query "
                        "cannot check", "give host (and port) in the DSN itself")
    hosts = [h.strip() for h in str(info.get("host") or "").split(",")]
    addrs = [a.strip() for a in str(info.get("hostaddr") or "").split(",")]
    ports = [p.strip() for p in str(info.get("port") or "").split(",")]
    count = max(len(hosts), len(addrs))
    if len(hosts) not in (1, count) or len(addrs) not in (1, count):
        raise ToolError("invalid_database", "the DSN's host and hostaddr lists differ in length",
                        "give one hostaddr per host, or none")
    pinned_hosts: list[str] = []
    pinned_addrs: list[str] = []
    for index in range(count):
        host = hosts[index] if len(hosts) > 1 else hosts[0]
        addr = addrs[index] if len(addrs) > 1 else addrs[0]
        raw_port = ports[index] if len(ports) > 1 else ports[0]
        port = int(raw_port) if raw_port.isdigit() else 5432
        if addr:
            checked = _pg_check_host(addr, port)
        elif not host or host.startswith(("/", "@")):
            pinned_hosts.append(host)
            pinned_addrs.append("")
            continue
        else:
            checked = _pg_check_host(host, port)
        pinned_hosts.append(host)
        pinned_addrs.append(checked.address)
    if any(pinned_addrs):
        info["host"] = ",".join(pinned_hosts)
        info["hostaddr"] = ",".join(pinned_addrs)
    return psycopg.conninfo.make_conninfo(**info)


def _pg_check_host(host: str, port: int) -> Target:
    try:
        return check_target_host(host, port, what="explain_query")
    except ToolError as exc:
        if exc.code != "target_refused":
            raise
        raise ToolError("target_refused",
                        f"PostgreSQL host {host} is not loopback and not in the allowed hosts",
                        exc.hint) from None


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for child in node.get("Plans", []) or []:
        out.extend(_walk(child))
    return out


def _pg_plan_text(node: dict[str, Any], depth: int = 0) -> list[str]:
    label = node.get("Node Type", "?")
    if node.get("Relation Name"):
        label += f" on {node['Relation Name']}"
        if node.get("Alias") and node["Alias"] != node["Relation Name"]:
            label += f" {node['Alias']}"
    if node.get("Index Name"):
        label += f" using {node['Index Name']}"
    stats = []
    if "Actual Total Time" in node:
        stats.append(f"time={node['Actual Total Time']:.3f} ms")
    if "Actual Rows" in node:
        stats.append(f"rows={node['Actual Rows']} loops={node.get('Actual Loops', 1)}")
    lines = ["  " * depth + ("-> " if depth else "") + label
             + (f" ({' '.join(stats)})" if stats else "")]
    for key in ("Filter", "Index Cond", "Sort Key", "Sort Method", "Rows Removed by Filter"):
        if key in node:
            lines.append("  " * depth + f"     {key}: {node[key]}")
    for child in node.get("Plans", []) or []:
        lines.extend(_pg_plan_text(child, depth + 1))
    return lines


def _pg_run(inp: QueryInput, report: Callable[[float, str], None]) -> QueryResult:
    try:
        import psycopg
    except ImportError:
        raise ToolError("missing_dependency", "psycopg (version 3) is not installed",
                        "pip install 'psycopg[binary]'") from None
    import json

    dsn = _pg_pinned_dsn(inp.database)  # the server checked, and connected to as checked
    toks = read_only_statement(inp.sql, "postgresql")
    sql = inp.sql[toks[0].start:toks[-1].end]
    notes: list[str] = []
    params = _bind(toks, inp.params, notes)
    pg_sql, pg_params = _pg_sql(sql, toks, params)
    # With NULLs bound, a custom plan sees "col = NULL" and skips the table
    # altogether; a generic plan (parameters unknown) is the honest one.
    generic = inp.params is None and bool(placeholders(toks))
    dollar_sql, n_params = _pg_dollar(sql, toks)
    statement_ids = itertools.count(1)
    if generic:
        notes.append("PostgreSQL planned the query generically (plan_cache_mode = "
                     "force_generic_plan), as for a prepared statement")
    timeout_ms = str(int(inp.timeout * 1000))

    try:
        conn = psycopg.connect(dsn, connect_timeout=10, autocommit=False)
    except psycopg.Error as exc:
        raise ToolError("database_unreachable", f"cannot connect to PostgreSQL: {exc}",
                        "check the DSN, that the server runs, and the credentials") from None

    def explain(cur: Any) -> dict[str, Any]:
        if generic:
            # Only a prepared statement's plan honours plan_cache_mode. A
            # fresh name each time: after an error the old one may linger.
            name = f"perfagent_q{next(statement_ids)}"
            cur.execute(f"PREPARE {name} AS {dollar_sql}")
            cur.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {name}("
                        + ", ".join(["NULL"] * n_params) + ")")
            doc = cur.fetchone()[0]
            cur.execute(f"DEALLOCATE {name}")
        else:
            cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + pg_sql, pg_params)
            doc = cur.fetchone()[0]
        doc = json.loads(doc) if isinstance(doc, str) else doc
        return dict(doc[0])

    def timed(cur: Any) -> tuple[float, dict[str, Any], int]:
        runs: list[tuple[float, dict[str, Any]]] = []
        started = time.perf_counter()
        for _ in range(inp.repeat):
            doc = explain(cur)
            runs.append((float(doc.get("Execution Time", 0.0)), doc))
            if time.perf_counter() - started > TIMING_BUDGET_S:
                break
        runs.sort(key=lambda r: r[0])
        median = statistics.median(r[0] for r in runs)
        return median, runs[len(runs) // 2][1], len(runs)

    try:
        # First pass in a READ ONLY transaction: a query that tries to
        # write (a volatile function, say) fails here instead of writing.
        conn.read_only = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT set_config('statement_timeout', %s, true)",
                            [timeout_ms])
                if generic:
                    cur.execute("SELECT set_config('plan_cache_mode', 'force_generic_plan', "
                                "true)")
                report(0.2, "running EXPLAIN ANALYZE")
                median_ms, doc, runs = timed(cur)
                plan = doc["Plan"]
                relations = {n["Relation Name"] for n in _walk(plan)
                             if n.get("Relation Name")}
                sizes: dict[str, int] = {}
                columns: dict[str, list[str]] = {}
                for rel in relations:
                    cur.execute("SELECT greatest(reltuples, 0)::bigint FROM pg_class "
                                "WHERE oid = to_regclass(%s)", [_pg_ident(rel)])
                    found = cur.fetchone()
                    sizes[rel] = int(found[0]) if found and found[0] is not None else 0
                    cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = "
                                "to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
                                [_pg_ident(rel)])
                    columns[rel] = [r[0] for r in cur.fetchall()]
        finally:
            conn.rollback()
            conn.read_only = False
        findings, suggestions, table_rows = _pg_findings(
            plan, _safe_shape(toks), sizes, columns)
        measurements = [Measurement(name="query_time", value=round(median_ms, 4),
                                    unit="ms", source="explain_query", target=sql)]
        if suggestions and inp.measure_indexes:
            for i, s in enumerate(suggestions):
                report(0.5 + 0.5 * i / len(suggestions), f"measuring {s.sql}")
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT set_config('statement_timeout', %s, true), "
                                    "set_config('lock_timeout', '2s', true)", [timeout_ms])
                        if generic:
                            cur.execute("SELECT set_config('plan_cache_mode', "
                                        "'force_generic_plan', true)")
                        t0 = time.perf_counter()
                        cur.execute(s.sql)
                        s.build_ms = round((time.perf_counter() - t0) * 1000, 3)
                        after_ms, after_doc, _ = timed(cur)
                except psycopg.Error as exc:
                    s.note = f"could not measure: {str(exc).strip()}"
                    continue
                finally:
                    conn.rollback()  # the index is never kept
                index_name = s.sql.split()[2].strip('"')
                s.plan_after = _pg_plan_text(after_doc["Plan"])
                s.used_by_planner = any(n.get("Index Name") == index_name
                                        for n in _walk(after_doc["Plan"]))
                s.time_before_ms = round(median_ms, 4)
                s.time_after_ms = round(after_ms, 4)
                s.speedup = round(median_ms / after_ms, 2) if after_ms > 0 else None
                s.measured = True
                if not s.used_by_planner:
                    s.note = "the planner did not use this index; it does not help"
            _settle(findings, suggestions)
            measurements += _best_index_time(suggestions, sql)
            notes.append("indexes were created inside a transaction that was rolled back; "
                         "while it ran, writes to the table waited (lock_timeout 2 s)")
    except psycopg.errors.QueryCanceled:
        raise ToolError("timeout", f"the query ran longer than {inp.timeout:g} s",
                        "raise timeout, or add a LIMIT while investigating") from None
    except psycopg.errors.ReadOnlySqlTransaction as exc:
        raise ToolError("not_read_only", f"refused: the query tries to write ({exc})",
                        "explain_query runs only read-only queries") from None
    except psycopg.Error as exc:
        raise ToolError("sql_error", f"PostgreSQL refused the query: {str(exc).strip()}",
                        "fix the SQL (table and column names, syntax) and try again") from None
    finally:
        conn.close()

    notes.append("query_time is PostgreSQL's Execution Time from EXPLAIN ANALYZE "
                 "(server side, without network transfer)")
    summary = [f"{_short(sql)}: median {median_ms:.2f} ms over {runs} EXPLAIN ANALYZE runs"]
    scans = [f for f in findings if f.kind == "full_scan"]
    if scans:
        summary.append("; ".join(f.summary for f in scans[:2]))
    for s in suggestions[:1]:
        summary.append(f"{s.sql}: {s.time_before_ms} -> {s.time_after_ms} ms "
                       f"({s.speedup}x)" if s.speedup else f"suggested: {s.sql}")
    return QueryResult(
        engine="postgresql", database=_mask(inp.database), sql=sql, plan_json=doc,
        plan_text="\n".join(_pg_plan_text(plan)), query_time_ms=round(median_ms, 4),
        runs=runs, rows_returned=int(plan.get("Actual Rows", 0)), table_rows=table_rows,
        index_suggestions=suggestions, findings=findings, measurements=measurements,
        notes=notes, summary="\n".join(summary[:3]))


def _pg_ident(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def _pg_findings(plan: dict[str, Any], shape: QueryShape | None, sizes: dict[str, int],
                 columns: dict[str, list[str]]) -> tuple[list[Finding], list[IndexSuggestion],
                                                         dict[str, int]]:
    findings: list[Finding] = []
    suggestions: list[IndexSuggestion] = []
    table_rows: dict[str, int] = {}
    seen: set[str] = set()
    has_sort = any(n.get("Node Type") == "Sort" for n in _walk(plan))
    for node in _walk(plan):
        kind = node.get("Node Type", "")
        if kind == "Sort" and (node.get("Sort Space Type") == "Disk"
                               or "external" in str(node.get("Sort Method", ""))):
            findings.append(Finding(
                kind="temp_sort", severity="medium",
                summary=f"sort spilled to disk ({node.get('Sort Method')}, "
                        f"{node.get('Sort Space Used')} kB) on {node.get('Sort Key')}",
                location=", ".join(node.get("Sort Key", [])) or None,
                evidence="raise work_mem for this query or add an index that returns rows "
                         "in order"))
        if kind != "Seq Scan" or not node.get("Relation Name"):
            continue
        rel = node["Relation Name"]
        loops = int(node.get("Actual Loops", 1) or 1)
        kept = int(node.get("Actual Rows", 0)) * loops
        removed = int(node.get("Rows Removed by Filter", 0)) * loops
        rows = max(sizes.get(rel, 0), kept + removed)
        table_rows[rel] = rows
        if rows <= SCAN_ROWS:
            continue
        severity: Literal["high", "medium"] = "high" if rows > HIGH_ROWS else "medium"
        findings.append(Finding(
            kind="full_scan", severity=severity,
            summary=f"sequential scan of {rel} (~{rows} rows)"
                    + (f", filter removed {removed} of {kept + removed}" if removed else ""),
            location=rel, evidence=f"Filter: {node['Filter']}" if node.get("Filter") else None))
        selective = bool(node.get("Filter")) and removed >= 0.5 * (kept + removed)
        if not selective and not (has_sort and shape is not None and shape.order_by):
            continue  # an index helps a filter that drops most rows, or a sort
        picked = suggest_index(shape, rel, node.get("Alias", rel),
                               lambda t: columns.get(t, []))
        if not picked:
            # Fall back on the filter text: "(email = 'x'::text)".
            found = [c for c in re.findall(r"\(?(\w+)\)? (?:=|<|>|<=|>=|~~) ",
                                           node.get("Filter", ""))
                     if c in columns.get(rel, [])]
            if found:
                picked = [(list(dict.fromkeys(found))[:3], f"Filter: {node['Filter']}")]
        for cols, reason in picked:
            name, sql = _index_sql(rel, cols)
            if name in seen:
                continue
            seen.add(name)
            suggestions.append(IndexSuggestion(table=rel, columns=cols, sql=sql, reason=reason))
            findings.append(Finding(
                kind="missing_index", severity=severity,
                summary=f"{rel} is scanned"
                        + (f" and the filter drops {removed} rows" if removed else "")
                        + f" ({reason}); suggested: {sql}",
                location=rel,
                evidence=f"Filter: {node['Filter']}" if node.get("Filter") else None))
    return findings, suggestions, table_rows


# --------------------------------------------------------------------------- run


async def run(inp: QueryInput, progress: ProgressCallback | None = None) -> QueryResult:
    """Explain and time one read-only query; measure the indexes it suggests."""
    loop = asyncio.get_running_loop()

    def report(fraction: float, text: str) -> None:
        if progress is not None:
            # The work runs on a worker thread; progress belongs to the caller's loop.
            loop.call_soon_threadsafe(progress, fraction, text)

    worker = _pg_run if _is_postgres(inp.database) else _sqlite_run
    result = await asyncio.to_thread(worker, inp, report)
    if progress is not None:
        progress(1.0, result.summary.splitlines()[0])
    return result


SPEC = ToolSpec(
    name="explain_query",
    description=(
        "Explain and time one read-only SQL query on a SQLite file or a PostgreSQL DSN: the "
        "query plan, median execution time, findings for full scans of large tables, temp "
        "sorts and missing indexes, and for each suggested CREATE INDEX the measured time "
        "before and after (built on a throwaway copy or in a rolled-back transaction; the "
        "database itself is never modified)."
    ),
    input_model=QueryInput,
    result_model=QueryResult,
    run=run,
    runs_code=False,
)

__all__ = ["SPEC", "IndexSuggestion", "QueryInput", "QueryResult", "query_shape",
           "read_only_statement", "run", "suggest_index", "tokenize"]
