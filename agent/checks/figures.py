"""Quantitative claims in a draft and what grounds each one.

A *figure* is a number with a unit or multiplier (ms, s, %, ×, req/s, MB, rows, queries…).
Each figure is classified in its own clause: a target or budget, a proposed setting, an
illustration, a quoted tool input, a grounded value (a measurement, a number in a tool's
*result*, the user's words, a named source, or a derivation of those: a difference, sum,
ratio or percent change), a marked estimate, or else unsupported. Comparison is unit-aware
(231.4 ms = 231 ms = 0.23 s) with the tolerance of the precision the writer displays.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.checks.text import prose, sentences, words

if TYPE_CHECKING:  # numpy loads when a draft is judged, not when agent is imported
    import numpy as np

# --------------------------------------------------------------------------- units

_UNIT_TABLE: list[tuple[str, str, float]] = [
    # (regex, family, factor to the family's base unit)
    (r"milliseconds?|msecs?|ms", "time", 1.0),
    (r"µs|us|microseconds?", "time", 0.001),
    (r"seconds?|secs?|s", "time", 1000.0),
    (r"%|percent|per cent", "percent", 1.0),
    (r"×|x|times", "ratio", 1.0),
    (r"req/s|reqs/s|requests/s|requests per second|rps|qps|queries/s|ops/s|/s", "rate", 1.0),
    (r"gib", "bytes", 1024.0**3), (r"gb", "bytes", 1e9),
    (r"mib", "bytes", 1024.0**2), (r"mb", "bytes", 1e6),
    (r"kib", "bytes", 1024.0), (r"kb", "bytes", 1e3),
    (r"bytes", "bytes", 1.0),
    (r"rows?|queries|query|calls?|entries|entry|keys?|round[- ]trips?|requests?|spans?|"
     r"lookups?|hits?|misses|evictions|items|objects|records|connections|workers|cores?",
     "count", 1.0),
]
_UNIT_RE = "|".join(f"(?:{u})" for u, _, _ in _UNIT_TABLE)
_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
FIGURE_RE = re.compile(
    rf"(?<![\w.,/:#-])(?P<num>{_NUM})(?P<mult>[kKM](?![a-zA-Z]))?"
    rf"(?:(?P<range>\s*[–-]\s*)(?P<num2>{_NUM}))?\s?-?\s?(?P<unit>{_UNIT_RE})(?![\w/])"
    rf"(?!\s*\d)",
    re.I,
)
_UNIT_LOOKUP = [(re.compile(rf"^(?:{u})$", re.I), fam, f) for u, fam, f in _UNIT_TABLE]


def unit_family(unit: str) -> tuple[str, float] | None:
    """``"ms"`` -> ("time", 1.0); ``"s"`` -> ("time", 1000.0); None when unknown."""
    u = unit.strip()
    low = u.lower()
    extra = {"1/s": ("rate", 1.0), "count": ("count", 1.0), "load/core": ("ratio", 1.0),
             "% of one core": ("percent", 1.0), "b": ("bytes", 1.0), "pages": ("count", 1.0)}
    if low in extra:
        return extra[low]
    for pattern, fam, factor in _UNIT_LOOKUP:
        if pattern.match(u):
            return fam, factor
    return None


def _num(raw: str) -> float:
    return float(raw.replace(",", ""))


def _half_unit(raw: str) -> float:
    """Half a unit of the last digit the writer displays (230 -> 5, 231.4 -> 0.05)."""
    raw = raw.replace(",", "")
    if "." in raw:
        return 0.5 * 10 ** -len(raw.split(".")[1])
    stripped = raw.rstrip("0")
    zeros = len(raw) - len(stripped) if stripped else 0
    return max(0.5, min(0.5 * 10 ** min(zeros, 1), 0.025 * float(raw)))


# --------------------------------------------------------------------------- figures


@dataclass
class Figure:
    text: str
    value: float            # normalised to the family's base unit
    family: str
    tolerance: float        # in the base unit
    start: int
    sentence: str
    clause: str
    status: str = "unsupported"
    grounds: str = ""


@dataclass
class FigureAudit:
    """Which figures in a draft trace to a measurement or named source."""

    grounded: list[str]
    unsupported: list[str]
    figures: list[Figure] = field(default_factory=list)


_APPROX = words(r"about|around|approximately|approx\.?|roughly|nearly|almost|close to|"
                r"some|circa|more like")
_TARGET_BEFORE = re.compile(
    r"(?:[<>≤≥]=?|\b(?:under|below|less than|at most|within|no more than|"
    r"budgets?|targets?|slos?|thresholds?|goals?|limits?|aim(?:ing)? for|"
    r"keep(?:ing)? (?:it|p\d\d|\w+) (?:under|below)|p\(\d\d\)\s*<|stays? under|"
    r"(?:above|over|exceeds?|beyond) (?:the|a|an|its|our|your))\b)\W*"
    r"(?:(?:the|a|an|of|our|your|its|p\d\d|lcp|cls|inp|ttfb|latency|is|at|to|=|:)\W*){0,3}$",
    re.I,
)
_TARGET_AFTER = re.compile(
    r"^\W{0,3}(?:p\d\d\W+)?(?:budget|target|threshold|slo|goal|limit|ceiling|objective)s?\b",
    re.I)
_SETTING_BEFORE = re.compile(
    r"\b(?:ttl|max-age|s-maxage|timeout|expir\w*|interval|every|sleep|backoff|"
    r"maxsize|pool_size|pool|for|ramp\w*|duration|window of|cache (?:it |them )?for|"
    r"set(?:ting)? (?:it |the \w+ )?to|retry after|ex=|wait|staleness of|stale for|"
    r"up to|(?:raise|raising|increase|increasing|bump|resize|grow|lower|reduce|cap)\w* "
    r"(?:\w+ ){0,3}to)\W*(?:(?:a|an|the|of|to|=|:)\W*){0,2}$",
    re.I,
)
_PROPOSED_SETTING = words(r"cach\w*|ttl|run\w*|test\w*|keep|store|expir\w*|sleep|wait|retr\w*|"
                          r"load|sample|profil\w*|record|collect|window|set|hold|stale\w*")
_SETTING_AFTER = re.compile(
    r"^\W{0,3}(?:\w+\W+)?(?:ttl|timeout|time-to-live|interval|window|expiry|lifetime|"
    r"max-age|cache|sleep|ramp|test|run|load test)\b", re.I)
_ILLUSTRATION = words(r"e\.g\.|for example|for instance|say|illustrative|illustration|"
                      r"hypothetical|imagine|suppose")
_STRONG_ESTIMATE = words(
    r"estimat\w*|expect\w*|projected|projection|should|would|could|likely|my guess|"
    r"i'd guess|guess|probably|anticipate\w*|predict\w*|forecast\w*|might|may")
_CHANGE = words(
    r"after|once|drops?|dropping|cut\w*|sav\w*|reduc\w*|improv\w*|gains?|down to|land\w*|"
    r"brings?|bring\w*|become\w*|with the (?:fix|index|cache|change)|from .{1,40} to|→|->")
#: a clause that presents a figure as a comparison or derivation of others
_DERIVATION_CUE = words(
    r"by|breach\w*|exceed\w*|over|under|above|below|beyond|saved?|saves|saving|faster|slower|fewer|less|more|"
    r"lower|higher|smaller|larger|bigger|off|cut\w*|reduc\w*|difference|gap|delta|"
    r"points?|share|of|per|each|times|ratio|total|sum|altogether|combined|together|"
    r"remaining|left|plus|minus|headroom|drops?|gains?|improv\w*|speed-?up|"
    r"from|→|->|=|≈|/|×|x|half|halve\w*|double\w*|out of|in all|overall|whole|"
    r"down|up|instead|versus|vs\.?|compared|against|expected|estimat\w*|leaves?")
#: a figure presented as a general truth, which no derivation of this turn's data makes
_GENERIC = words(r"typically|usually|in practice|generally|commonly|normally|more like|"
                 r"in production|under real load|real[- ]world|on average|in general|"
                 r"most (?:sites|apps|teams|services)|industry|rule of thumb")
_ESTIMATE_SIGNS = re.compile(r"[~≈]")
_INPUT_KEYS = {"rate", "duration", "planned_duration_s", "interval", "sample_keys", "threshold",
               "ttl", "target_hit_rate", "budgets", "runs", "users", "vus", "concurrency",
               "sql", "query", "url", "target", "script", "args", "pid", "policies",
               "sizes", "path", "access_log", "key_column", "method"}


def _column_is_estimate(lines: list[str], row: int, col: int) -> bool:
    """Walk up to the table's header row and test its cell ``col`` for an estimate marker."""
    i = row
    while i > 0 and lines[i - 1].lstrip().startswith("|"):
        i -= 1
    header = [c.strip() for c in lines[i].strip().strip("|").split("|")]
    return col < len(header) and bool(_STRONG_ESTIMATE.search(header[col]) or
                                      _ESTIMATE_SIGNS.search(header[col]))


def _blank_inline_code(text: str) -> str:
    return re.sub(r"`[^`\n]*`", lambda m: "_" * len(m.group(0)), text)


_LISTED = re.compile(rf"(?:(?<![\w.])(?:{_NUM})\s*/\s*)+$")
_CLAUSE_BREAK = re.compile(r";|\||\s[—–]\s")


def extract_figures(draft: str) -> list[Figure]:
    """Every figure of the draft's prose, with its sentence and clause."""
    text = _blank_inline_code(prose(draft))
    figures: list[Figure] = []
    spans = sentences(text)
    for span in spans:
        for match in FIGURE_RE.finditer(span.text):
            unit = unit_family(match.group("unit"))
            if unit is None:
                continue
            family, factor = unit
            if match.group("unit") == "s" and re.fullmatch(r"[1-5]\d\d", match.group("num")) \
                    and match.group(0)[-2:-1].isdigit():
                continue  # "503s": status codes
            mult = {"k": 1e3, "m": 1e6}.get((match.group("mult") or "").lower(), 1.0)
            raws = [match.group("num")]
            if match.group("num2"):
                raws.append(match.group("num2"))
            # "88.2 / 190.5 / 231.4 ms": every number of the list carries the unit
            listed = _LISTED.search(span.text[max(0, match.start() - 80):match.start()])
            if listed:
                raws += re.findall(_NUM, listed.group(0))
            # clause: between the nearest ";", "|" or dash break around the figure
            bounds = [m.end() for m in _CLAUSE_BREAK.finditer(span.text, 0, match.start())]
            left = max(bounds, default=0)
            after = _CLAUSE_BREAK.search(span.text, match.end())
            right = after.start() if after else len(span.text)
            for raw in raws:
                value = _num(raw) * mult * factor
                tol = max(_half_unit(raw) * mult * factor, 0.01 * abs(value))
                exact = max(0.5 * 10 ** -len(raw.split(".")[1]) if "." in raw else 0.5,
                            0.015 * abs(_num(raw))) * mult * factor
                lead = span.text[max(0, match.start() - 14):match.start()]
                if re.search(r"[~≈]\s*$|\b(?:about|around|roughly|nearly|almost|approximately|"
                             r"close to|some|over|more than|under|just under|just over)\s*$",
                             lead, re.I):
                    tol = max(tol, 0.04 * abs(value))
                figures.append(Figure(
                    text=match.group(0).strip(), value=value, family=family, tolerance=tol,
                    start=span.start + match.start(), sentence=span.text,
                    clause=span.text[left:right]))
                figures[-1].__dict__["_local"] = (match.start() - left, match.end() - left)
                figures[-1].__dict__["exact_tolerance"] = min(exact, tol)
    return figures


# --------------------------------------------------------------------------- what grounds


@dataclass
class Pool:
    """Grounding values: (family or '' for unitless, value, where it comes from)."""

    families: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    derivable: list[bool] = field(default_factory=list)

    def add(self, family: str, value: float, origin: str, derive: bool = True) -> None:
        self.families.append(family)
        self.values.append(value)
        self.origins.append(origin)
        self.derivable.append(derive)


def _text_numbers(text: str, origin: str, pool: Pool, unitless: bool = True,
                  derive_unitless: bool = True) -> None:
    consumed: list[tuple[int, int]] = []
    for match in FIGURE_RE.finditer(text):
        unit = unit_family(match.group("unit"))
        if unit is None:
            continue
        mult = {"k": 1e3, "m": 1e6}.get((match.group("mult") or "").lower(), 1.0)
        for raw in (match.group("num"), match.group("num2")):
            if raw:
                pool.add(unit[0], _num(raw) * mult * unit[1], origin)
        consumed.append((match.start(), match.end()))
    if not unitless:
        return
    for match in re.finditer(r"(?<![\w.])(" + _NUM + r")(?![\w.])", text):
        if any(a <= match.start() < b for a, b in consumed):
            continue
        pool.add("", _num(match.group(1)), origin, derive_unitless)


def _key_unit(key: str) -> tuple[str, float] | None:
    k = key.lower()
    for suffix, unit in (("_ms", ("time", 1.0)), ("_s", ("time", 1000.0)),
                         ("_seconds", ("time", 1000.0)), ("_pct", ("percent", 1.0)),
                         ("_percent", ("percent", 1.0)), ("_kb", ("bytes", 1e3)),
                         ("_mb", ("bytes", 1e6)), ("_bytes", ("bytes", 1.0))):
        if k.endswith(suffix):
            return unit
    return None


def _walk_json(obj: Any, origin: str, pool: Pool, inputs: set[str], unit: tuple[str, float] | None,
               inputs_values: set[str]) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if str(key) in inputs or str(key) in _INPUT_KEYS or str(key).startswith("planned_"):
                continue
            _walk_json(value, origin, pool, inputs, _key_unit(str(key)) or unit, inputs_values)
    elif isinstance(obj, list):
        for value in obj:
            _walk_json(value, origin, pool, inputs, unit, inputs_values)
    elif isinstance(obj, bool) or obj is None:
        return
    elif isinstance(obj, (int, float)):
        if unit:
            pool.add(unit[0], float(obj) * unit[1], origin)
        else:
            pool.add("", float(obj), origin, False)
    elif isinstance(obj, str):
        if obj in inputs_values:
            return
        text = obj
        for value in inputs_values:
            if len(value) > 12:
                text = text.replace(value, " ")
        _text_numbers(text, origin, pool, derive_unitless=False)


def build_pool(data: Any) -> Pool:
    pool = Pool()
    for m in data.measurements:
        unit = unit_family(str(m.get("unit", "")))
        try:
            value = float(m["value"])
        except (KeyError, TypeError, ValueError):
            continue
        if unit:
            pool.add(unit[0], value * unit[1], f"measurement {m.get('name')}")
        pool.add("", value, f"measurement {m.get('name')}", False)
        budget = str(m.get("budget") or "")
        if budget:
            _text_numbers(budget + " " + str(m.get("unit", "")), "budget", pool, unitless=False)
    for f in data.findings:
        _text_numbers(str(f.get("summary", "")), f"finding {f.get('kind')}", pool)
    inputs: set[str] = set()
    input_values: set[str] = set()
    for call in data.tool_calls:
        args = call.get("args") or {}
        if isinstance(args, dict):
            inputs.update(str(k) for k in args)
            input_values.update(str(v) for v in args.values() if isinstance(v, str))
    for i, source in enumerate(data.sources):
        text = str(source)
        parsed: Any = None
        if text[:1] in "{[":
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
        if parsed is not None:
            start = len(pool.values)
            _walk_json(parsed, "tool output", pool, inputs, None, input_values)
            for j in range(start, len(pool.values)):
                pool.derivable[j] = False
        else:
            start = len(pool.values)
            if i == 0:  # the question: not the digits of its URLs, ports, ids or paths
                text = re.sub(r"\S*[/:=?]\S*", " ", text)
            _text_numbers(text, "the question" if i == 0 else "a named source", pool)
            if i > 0:
                for j in range(start, len(pool.values)):
                    pool.derivable[j] = False
    # a percentile's name defines its share: p95 -> 95 % below, 5 % above
    for text in [data.draft, *data.sources[:1]]:
        for n in set(re.findall(r"\bp(\d\d(?:\.\d)?)\b", text)):
            pool.add("percent", float(n), "percentile definition")
            pool.add("percent", round(100 - float(n), 3), "percentile definition")
    for value, unit in data.target_values:
        fam = unit_family(unit)
        if fam:
            pool.add(fam[0], value * fam[1], "target")
    return pool


class Grounder:
    """Matches a figure against the pool and its simple derivations (vectorised)."""

    def __init__(self, pool: Pool) -> None:
        import numpy as np

        self.pool = pool
        self.fam = np.array(pool.families, dtype=object)
        self.val = np.array(pool.values, dtype=float)
        self._derived: tuple[np.ndarray, np.ndarray] | None = None
        self.direct_ok = np.array([o not in ("target", "budget") for o in pool.origins],
                                  dtype=bool)
        self.extra: list[tuple[str, float]] = []

    def direct(self, fig: Figure) -> str:
        import numpy as np

        if not len(self.val):
            return ""
        close = (np.abs(self.val - fig.value) <= fig.tolerance) & self.direct_ok
        typed = close & (self.fam == fig.family)
        if typed.any():
            return self.pool.origins[int(np.argmax(typed))]
        # a unitless number in a result (rows, counts, a speedup, a share) quotes as is;
        # a time or size is only grounded by a number known to be in that unit
        if fig.family in ("count", "percent", "rate") or fig.text.endswith("times"):
            raw = (self.fam == "") & close
            if raw.any():
                return self.pool.origins[int(np.argmax(raw))]
        return ""

    @staticmethod
    def derive(anchors: list[tuple[str, float]],
               others: list[tuple[str, float]]) -> tuple[np.ndarray, np.ndarray]:
        """Differences, sums, ratios, shares and percent changes of ``anchors`` (measured or
        quoted values) with each other and with ``others`` (targets, settings, counts)."""
        import numpy as np

        items = list(dict.fromkeys(anchors))[:60] + list(dict.fromkeys(others))[:40]
        if not items:
            return np.array([], dtype=object), np.array([])
        f = np.array([i[0] for i in items], dtype=object)
        v = np.array([i[1] for i in items], dtype=float)
        anchor = np.arange(len(items)) < min(len(dict.fromkeys(anchors)), 60)
        keep = (v > 0) & ~((f == "") & (v <= 1))
        f, v, anchor = f[keep], v[keep], anchor[keep]
        a, b = v[:, None], v[None, :]
        fa = np.broadcast_to(f[:, None], (len(v), len(v)))
        fb = np.broadcast_to(f[None, :], (len(v), len(v)))
        same = ((fa == fb) | (fa == "") | (fb == "")) & (anchor[:, None] | anchor[None, :])
        np.fill_diagonal(same, False)
        fam_ab = np.where(fa == "", fb, fa)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = a / b
            pct_change = (a - b) / a * 100
            share = a / b * 100
        ratio_f = np.full(ratio.shape, "ratio", dtype=object)
        pct_f = np.full(ratio.shape, "percent", dtype=object)
        out_f = [fam_ab[same], fam_ab[same], ratio_f[same], pct_f[same], pct_f[same]]
        out_v = [np.abs(a - b)[same], (a + b)[same], ratio[same], np.abs(pct_change)[same],
                 share[same]]
        # a value per unitless count keeps its unit (1,200 req/s over 6 pods = 200 req/s),
        # and so does a value times a count (101 queries x 4.1 ms)
        per = ((fb == "") | (fb == "count")) & (fa != "") & (anchor[:, None] | anchor[None, :])
        out_f += [fa[per], fa[per]]
        out_v += [ratio[per], (a * b)[per]]
        vals = np.nan_to_num(np.concatenate(out_v), nan=-1, posinf=-1)
        return np.concatenate(out_f), vals

    @staticmethod
    def matches(fig: Figure, derived: tuple[np.ndarray, np.ndarray]) -> bool:
        import numpy as np

        fams, vals = derived
        if not len(vals):
            return False
        tol = fig.__dict__.get("exact_tolerance", fig.tolerance)
        return bool(((np.abs(vals - fig.value) <= tol) & (fams == fig.family)).any())


# --------------------------------------------------------------------------- classifying


def _inputs(data: Any) -> list[tuple[str, float]]:
    found = []
    for call in data.tool_calls:
        args = call.get("args") or {}
        if not isinstance(args, dict):
            continue
        for key, value in args.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            k = key.lower()
            if k in ("rate", "rps", "qps"):
                found.append(("rate", float(value)))
            elif "duration" in k or k in ("interval", "ttl", "seconds") or k.endswith("_s"):
                found.append(("time", float(value) * 1000))
            elif k.endswith("_ms"):
                found.append(("time", float(value)))
            else:
                found.append(("count", float(value)))
    return found


def classify(fig: Figure, grounder: Grounder, inputs: list[tuple[str, float]],
             lines: list[str], line_starts: list[int], text: str) -> None:
    local = fig.__dict__.get("_local", (0, 0))
    before = fig.clause[:local[0]]
    after = fig.clause[local[1]:]
    grounds = grounder.direct(fig)
    if grounds:
        fig.status, fig.grounds = "grounded", grounds
        return
    if _TARGET_BEFORE.search(before[-60:]) or _TARGET_AFTER.search(after[:40]):
        fig.status = "target"
        return
    setting = _SETTING_BEFORE.search(before[-40:])
    if setting and setting.group(0).lower().startswith("for") and not _PROPOSED_SETTING.search(
            fig.sentence):
        setting = None  # "blocks for 3 s" is a claim; "cache it for 60 s" a setting
    if setting or _SETTING_AFTER.search(after[:30]):
        fig.status = "setting"
        return
    if fig.family == "count" and re.search(r"\b1 in\s*$|\bout of\s*$", before):
        fig.status = "illustration"
        return
    if fig.family in ("rate", "time") and re.search(
            r"\b(?:test|run|load|k6|locust|drive|offered|ramp|scenario|replay)\w*\b", fig.sentence,
            re.I) and re.search(r"\b(?:at|for|of|with)\W*$|[—–-]\s*$|^\W*$", before[-12:]):
        fig.status = "setting"
        return
    if _ILLUSTRATION.search(fig.sentence):
        fig.status = "illustration"
        return
    if any(fam == fig.family and abs(v - fig.value) <= fig.tolerance for fam, v in inputs) \
            and re.search(r"\b(?:at|offered|drove|driving|with|ran|run|running|sent|of)\W*$",
                          before[-20:], re.I):
        fig.status = "input"  # quoted as the input it was ("we offered 50 req/s")
        return
    if _DERIVATION_CUE.search(fig.clause) and not _GENERIC.search(fig.sentence):
        fig.__dict__["derivable"] = True
    if _is_estimate(fig, before, lines, line_starts):
        fig.status = "estimate"
        return
    fig.status = "unsupported"


def _is_estimate(fig: Figure, before: str, lines: list[str], line_starts: list[int]) -> bool:
    if _GENERIC.search(fig.clause):
        return False  # "typically", "under real load … more like": a claim, not an estimate
    if _STRONG_ESTIMATE.search(fig.sentence) or _ESTIMATE_SIGNS.search(before[-4:]):
        return True
    if _APPROX.search(fig.clause) and _CHANGE.search(fig.sentence):
        return True
    # a table cell: its column header may mark the column as estimates
    import bisect

    row = bisect.bisect_right(line_starts, fig.start) - 1
    if 0 <= row < len(lines) and lines[row].lstrip().startswith("|"):
        col = lines[row][:fig.start - line_starts[row]].count("|") - 1
        return _column_is_estimate(lines, row, col)
    return False


_AUDITS: dict[tuple[Any, ...], FigureAudit] = {}


def _fingerprint(data: Any) -> tuple[Any, ...]:
    return (data.draft, repr(data.measurements), repr(data.findings), repr(data.tool_calls),
            tuple(data.sources), tuple(data.target_values), getattr(data, "question", ""))


def audit(data: Any) -> FigureAudit:
    """Every figure of the draft, classified (cached: the five checks of a turn share it)."""
    import numpy as np

    key = _fingerprint(data)
    cached = _AUDITS.get(key)
    if cached is not None:
        return cached
    figures = extract_figures(data.draft)
    grounder = Grounder(build_pool(data))
    inputs = _inputs(data)
    text = _blank_inline_code(prose(data.draft))
    lines = text.split("\n")
    starts, pos = [], 0
    for line in lines:
        starts.append(pos)
        pos += len(line) + 1
    for fig in figures:
        classify(fig, grounder, inputs, lines, starts, text)
    # a derivation of figures the draft itself quotes (grounded, targets, settings, inputs)
    # or of the user's numbers: 231.4 - 200 = 31.4 ms over budget; 2,412.8 / 38.6 = 62x
    pending = [f for f in figures if f.status in ("unsupported", "estimate")
               and f.__dict__.get("derivable")]
    if pending:
        quoted = [(f.family, f.value) for f in figures if f.status == "grounded"]
        quoted += [(fam, v) for fam, v, o in zip(grounder.pool.families, grounder.pool.values,
                                                  grounder.pool.origins, strict=True)
                   if o == "the question" and fam]
        shared = [(f.family, f.value) for f in figures if f.status in ("target", "setting")]
        shared += [(fam, v) for fam, v, o in zip(
            grounder.pool.families, grounder.pool.values, grounder.pool.origins, strict=True)
            if o in ("target", "budget", "percentile definition")
            or (o == "the question" and not fam)]
        everywhere = Grounder.derive(quoted, shared)
        by_paragraph: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for fig in pending:
            if Grounder.matches(fig, everywhere):
                fig.status, fig.grounds = "grounded", "derived from quoted figures"
                continue
            # estimates and quoted inputs of the same paragraph may enter a derivation too
            para = text.rfind("\n\n", 0, fig.start)
            if para not in by_paragraph:
                end_para = text.find("\n\n", fig.start)
                end_para = len(text) if end_para < 0 else end_para
                local = [(f.family, f.value) for f in figures if para <= f.start < end_para
                         and f.status in ("input", "estimate")]
                by_paragraph[para] = Grounder.derive(local, quoted) if local else (
                    np.array([], dtype=object), np.array([]))
            if Grounder.matches(fig, by_paragraph[para]):
                fig.status, fig.grounds = "grounded", "derived from quoted figures"
    result = FigureAudit(
        grounded=[f.text for f in figures if f.status == "grounded"],
        unsupported=[f.text for f in figures if f.status == "unsupported"],
        figures=figures,
    )
    if len(_AUDITS) >= 32:
        _AUDITS.pop(next(iter(_AUDITS)))
    _AUDITS[key] = result
    return result
