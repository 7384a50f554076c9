"""What a request names as measurable targets: URLs, files, databases, SQL.

Shared by the offline planner (which tool measures what) and the baseline
memory (which earlier measurements the user is asking about), so both read
a request the same way.
"""

from __future__ import annotations

import re

_PATH = r"(?<![\w/.-])((?:~?/)?(?:[\w.~-]+/)*[\w.-]+"
URL = re.compile(r"https?://[^\s'\"<>`)\]]+")
PY_FILE = re.compile(_PATH + r"\.py)\b")
DB_FILE = re.compile(_PATH + r"\.(?:db|sqlite3?))\b")
PG_DSN = re.compile(r"postgres(?:ql)?://[^\s'\"`]+")
REDIS_URL = re.compile(r"rediss?://[^\s'\"`]+")
SQL = re.compile(r"\b((?:SELECT|WITH)\b[^;`]*?)(?:;|`|$)", re.I | re.S | re.M)
TRACE_FILE = re.compile(r"(?<![\w/.-])((?:~?/)?(?:[\w.~-]+/)*[\w.-]*(?:trace|span|jaeger|otlp)"
                        r"[\w.-]*\.jsonl?)\b", re.I)
ACCESS_LOG = re.compile(_PATH + r"\.(?:log|csv|tsv|jsonl))\b")


def clean(target: str) -> str:
    """Drop the punctuation a sentence leaves on a URL or path."""
    return target.rstrip(".,;:!?")


def named_targets(text: str) -> list[str]:
    """Every URL, DSN, file and SQL statement the text names, in order, once each."""
    found = [clean(u) for u in URL.findall(text)]
    found += [clean(u) for u in (*PG_DSN.findall(text), *REDIS_URL.findall(text))]
    rest = URL.sub(" ", text)
    for pattern in (PY_FILE, DB_FILE, TRACE_FILE, ACCESS_LOG):
        found += pattern.findall(rest)
    found += [" ".join(s.split()) for s in SQL.findall(rest)]
    return list(dict.fromkeys(found))
