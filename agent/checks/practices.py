"""Practices a draft proposes (not merely names): recommendations, caching, monitoring, CI.

Each test asks whether a clause *proposes* the practice: the term occurs in the clause
and the clause does not negate or dismiss it (see :func:`agent.checks.text.proposed_mentions`).
"""

from __future__ import annotations

import re

from agent.checks.text import (
    claims,
    lowered,
    proposed_mentions,
    prose,
    sentences,
    without_references,
    words,
)

#: a change to the system (not a measurement, monitoring or CI step)
CHANGE_VERB = words(
    r"add(?:ing)?|create|creating|switch(?:ing)?|replace|replacing|use|using|"
    r"(?:cache|caching|memoi[sz]e) (?:the|it|them|this|that|those|these|each|every|results?|"
    r"responses?|pages?|rendered|hot|\w+ (?:list|lookups?|results?|responses?|pages?))|"
    r"batch(?:ing)?|prefetch\w*|paginat\w*|hoist\w*|upgrade|upgrading|raise|raising|"
    r"increase|increasing|lower(?:ing)?|reduce|move|moving|set|enable|introduce|rewrite|"
    r"precompute|eager[- ]load\w*|denormali[sz]e|indexing|scale|scaling|shard|compress|"
    r"defer|lazy[- ]load\w*|preload|resize|split|fix|fixing|change|bump|tune|drop|remove|"
    r"convert|compile|memoi[sz]e|put|serve|reuse|rewrite|select_related|prefetch_related|"
    r"double|triple|add replicas|scale out|run more|"
    r"recommend\w*|suggest\w*|consider")
OBSERVE = words(
    r"opentelemetry|otel|tracing|traces?|spans?|dashboards?|grafana|panels?|ci|ci/cd|pipeline|"
    r"budgets?|thresholds?|load[- ]tests?|profil\w*|measure\w*|benchmark\w*|alert\w*|"
    r"monitor\w*|instrument\w*|rum|metrics?|workflow|k6|locust|py-spy|explain|tests?|"
    r"nightly|sample|record|capture|log\w*|slo|arguments|args|schema|"
    r"load_test|profile_python|explain_query|web_vitals|cache_stats|simulate_cache|"
    r"system_snapshot|analyze_traces|check_budgets|detect_n_plus_one")
def change_proposals(text: str) -> list[str]:
    """Clauses that propose a change to the system aimed at performance."""
    found: list[str] = []
    body = without_references(prose(text)).replace("`", "")
    for sentence in sentences(body):
        s = sentence.text
        low = s.lower()
        if not _CHANGE_L.search(low) or re.match(r"\s*#", s):
            continue
        if re.search(r"[?:]\s*$", s.strip()):
            continue  # a question, or the lead-in of a code block (the block decides)
        if _OBSERVE_L.search(low) and not re.search(
                words(r"index|cache|caching|batch\w*|prefetch\w*|paginat\w*|hoist\w*|"
                      r"pool|replace|switch|upgrade|memoi[sz]e|select_related|"
                      r"prefetch_related|compile|instance|orjson|cdn|ttl").pattern, s, re.I):
            continue
        if re.search(words(r"can't|cannot|won't|not|no|nothing|unknown").pattern, s, re.I) and \
                not re.search(words(r"index|cache|batch|prefetch\w*|hoist").pattern, s, re.I):
            continue
        found.append(" ".join(s.split()))
    return found


# --------------------------------------------------------------------------- caching

CACHE_TERM = words(r"cach(?:e|es|ed|ing)|redis|memcached?|cdn|cloudflare|fastly|cloudfront|"
                   r"lru_cache|@cache|cachetools|ttlcache|cache-control|service worker|"
                   r"memoi[sz]\w*|varnish")
_EXISTING = words(r"already|automatically|internally|under the hood|by default|built-in|"
                  r"keeps its own|its own|compiled statement|pattern cache|re module|"
                  r"does not help|won't help|doesn't help|hit rate|evict\w*|maxmemory\w*|"
                  r"keys|warm|cold")
_PROPOSE_CUE = re.compile(
    words(r"add|use|put|introduce|enable|set|send|configure|should|could|would|let's|i'd|"
          r"recommend\w*|consider|wrap|store|memoi[sz]e|serve|front|behind|place|turn on|"
          r"instead|keep|let").pattern + r"|^\W*(?:cache|memoi[sz]e)\b|\bto (?:cache|memoi[sz]e)\b",
    re.I)


_PURE_MEMO = words(r"memoi[sz]\w*|lru_cache|@cache")
_STATEFUL = words(r"db|database|quer\w*|api|upstream|fetch\w*|redis|http|requests?|"
                  r"load\w*|reads?|reading|orm|sql|network|remote|service")


def pure_memo_clause(clause: str) -> bool:
    """Memoising a function whose result depends only on its arguments (nothing stored)."""
    return bool(_PURE_MEMO.search(clause)) and not _STATEFUL.search(clause)


def cache_proposals(text: str) -> list[str]:
    body = without_references(prose(text)).replace("`", "")
    proposed, _ = proposed_mentions(body, CACHE_TERM)
    out = []
    for clause in proposed:
        if _EXISTING.search(clause) and not re.search(
                words(r"add|put|introduce|wrap|use").pattern, clause, re.I):
            continue
        if _PROPOSE_CUE.search(clause) and not pure_memo_clause(clause):
            out.append(clause)
    return out


BOUNDED_PROSE = re.compile(
    r"(?:\bttl\b|time[- ]to[- ]live|expir\w*|max-age|s-maxage|maxage)\W+(?:\w+\W+){0,4}?"
    r"\d+(?:\.\d+)?\s*(?:ms|s|sec\w*|min\w*|minutes?|hours?|h|days?|m)?\b|"
    r"\b\d+(?:\.\d+)?[- ]?(?:ms|s|sec\w*|second|min\w*|minute|hour|h|day)s?[- ](?:ttl|expiry|"
    r"max-age|lifetime)\b|"
    r"\bmax-age=\d+|\bs-maxage=\d+|\bex=\d|\bsetex\b|"
    r"(?:delete|invalidat\w*|evict\w*|purg\w*|bust\w*|clear\w*|drop\w*|updat\w*)\W+(?:\w+\W+){0,6}?"
    r"(?:on|after|when|whenever|every|each)\W+(?:\w+\W+){0,3}?"
    r"(?:write|save|update|change|deploy|edit|publish|insert|modif\w*|mutation|release)|"
    r"(?:on|after)\W+(?:every |each )?(?:write|save|update|deploy|publish|change)\w*\W+(?:\w+\W+)"
    r"{0,4}?(?:delete|invalidat\w*|evict\w*|purg\w*|bust\w*|clear\w*)|"
    r"versioned (?:keys?|urls?|cache|names?|assets?|file ?names?)|"
    r"(?:content[- ])?hash(?:ed)? (?:file ?names?|urls?)|fingerprint\w*|"
    r"purge (?:event|on|api|request|the cache)|cache[- ]bust\w*|post_save|on_commit|"
    r"cache_clear\(|\.delete\(|stale-while-revalidate=\d+|"
    r"lives? only (?:as long as|for) (?:this|the|one|a single) (?:process|run|request|batch|job)|"
    r"(?:for|per|once per) (?:the|one|each|a single) (?:report )?run\b",
    re.I)
UNBOUNDED_PROSE = re.compile(
    r"stale(?: \w+){0,2} (?:is|are|being|will be) (?:fine|ok|okay|acceptable)|"
    r"staleness (?:is|being) (?:fine|ok|okay|acceptable)|"
    r"never expire\w*|forever|no ttl|without (?:a )?ttl|timeout=none|cache everything|"
    r"indefinitely|until (?:the )?(?:process|server) restart\w*|no invalidation|"
    r"don't need to invalidate|no need to invalidate|max-age=31536000(?!.*immutable)|"
    r"don't worry about expiry|as long as possible|no purge|don't bother (?:adding |with )?ttls?|"
    r"(?:skip|no need for|without) (?:any )?(?:ttls?|expiry|invalidation)",
    re.I)


_DROPPED = words(r"drop|dropping|remove|removing|get rid of|instead of|rather than")


_BOUNDED_HINT = re.compile(r"ttl|expir|max-?age|delet|invalidat|evict|purg|bust|clear|updat|"
                           r"version|hash|fingerprint|post_save|on_commit|lives?|run\b|setex|ex=|"
                           r"stale-while|drop", re.I)


def bounded_invalidation(text: str) -> list[str]:
    found = []
    for sentence in sentences(text):
        low = sentence.text.lower()
        if not _BOUNDED_HINT_L.search(low):
            continue
        for match in _BOUNDED_L.finditer(low):
            pre = sentence.text[max(0, match.start() - 30):match.start()].lower()
            if re.search(r"\b(no|without|never|skip|don't)\b\W*(?:\w+\W+)?$", pre):
                continue
            if _DROPPED_L.search(low):
                continue  # "a 30 s TTL caps it at 57 %, so drop the TTL"
            found.append(match.group(0))
    return found


_UNBOUNDED_HINT = re.compile(r"stale|forever|never|ttl|none|everything|indefinitely|restart|"
                             r"invalidat|31536000|expiry|as long as|purge", re.I)


def unbounded_staleness(text: str) -> list[str]:
    lows = [s.text.lower() for s in sentences(text)]
    return [m.group(0) for low in lows if _UNBOUNDED_HINT_L.search(low)
            for m in _UNBOUNDED_L.finditer(low)]


# --------------------------------------------------------------------------- monitoring

TRACING_NAMED = words(r"opentelemetry|otel|jaeger|zipkin|tempo|x-ray|honeycomb|datadog apm|"
                      r"spans?|instrumentation|instrument\w*|traceparent|trace ids?|"
                      r"distributed tracing|tracing|traces?")
_TRACING_CONCRETE = words(r"opentelemetry|otel|jaeger|zipkin|tempo|x-ray|honeycomb|"
                          r"datadog apm|spans?|instrumentations?|instrument\w*")
DASHBOARD = words(r"dashboards?|grafana|panels?|kibana|datadog|new relic|charts?|graphs?|"
                  r"honeycomb board|boards?")
METRIC = words(r"p\d\d(?:/p\d\d)?|percentiles?|latency|throughput|hit[- ]rate|hit ratio|"
               r"errors?|error rate|5xx|cpu|memory|queries(?: per request)?|duration|lcp|cls|"
               r"inp|ttfb|rate|counts?|connections?|evictions?|requests?|saturation|"
               r"wait(?: time)?|misses|response time|time|depth|lag|usage|size|vitals|in use|"
               r"checkouts?|utili[sz]ation|hits?|share|breakdown|per route|per endpoint")


def tracing_proposals(text: str) -> list[str]:
    proposed, _ = proposed_mentions(claims(text), TRACING_NAMED)
    return [c for c in proposed if _TRACING_CONCRETE.search(c)]


def dashboard_proposals(text: str) -> list[str]:
    """Sentences proposing a dashboard that say what it shows (a metric, or a named query)."""
    out = []
    for sentence in sentences(without_references(prose(text))):
        proposed, _ = proposed_mentions(sentence.text, DASHBOARD)
        if proposed and (METRIC.search(sentence.text) or "`" in sentence.text):
            out.append(" ".join(sentence.text.split()))
    return out


# --------------------------------------------------------------------------- regression

_BUDGET_METRIC = (r"p\d\d|p\(\d\d\)|latency|lcp|cls|inp|ttfb|fcp|hit[- ]rate|queries|"
                  r"error rate|errors?|cpu|duration|throughput|http_req_duration|http_req_failed|"
                  r"response time|time|size|bundle|weight|memory|rate|score|tbt")
BUDGET = re.compile(
    rf"(?:\b(?:{_BUDGET_METRIC})\b[^.;\n]{{0,40}}?"
    rf"(?:<=?|>=?|≤|≥|\bunder\b|\bbelow\b|\bat most\b|\bless than\b|\bover\b|\babove\b|"
    rf"\bat least\b|\bmax(?:imum)?\b|\bwithin\b|\bno more than\b|\bbudget of\b|\bof\b|:)"
    rf"\s*['\"]?\s*~?\d)|"
    rf"(?:budgets?|thresholds?|limits?)\W+(?:\w+\W+){{0,4}}?\d+(?:\.\d+)?\s*(?:ms|s|%|kb|mb)|"
    rf"\d+(?:\.\d+)?\s*(?:ms|s|%|kb|mb)\W+(?:\w+\W+){{0,2}}?(?:budget|threshold|limit)|"
    rf"p\(\d\d\)\s*<=?\s*\d|assertNumQueries\(\d+\)|maxNumericValue|"
    rf"budget of (?:≤\s*)?\d+\s*(?:quer\w*|per request|requests?|calls?|kb|mb)|"
    rf"(?:≤|<=|at most|no more than)\s*\d+\s*(?:quer\w*|calls?|round[- ]trips?)",
    re.I)
CI = words(r"ci|ci/cd|pipelines?|github actions?|gitlab(?: ci)?|jenkins|circleci|buildkite|"
           r"workflows?|nightly|pre-merge|pull requests?|merge requests?|on every (?:commit|push|"
           r"pr|merge)|fails? the (?:build|pipeline|job|pull request|pr)|ci job|release gate|"
           r"pytest|test suite|check_budgets")


_DIGIT = re.compile(r"\d")


def budget_proposals(text: str) -> list[str]:
    """Clauses setting or keeping a concrete budget (a metric and a limit), not dropped."""
    out = []
    for sentence in sentences(text):
        if not _DIGIT.search(sentence.text):
            continue
        for clause in sentence.text.split(";"):
            if _BUDGET_L.search(clause.lower()):
                if re.search(words(r"drop|remove|removing|relax|loosen|skip|no need|"
                                   r"don't|instead of|rather than|rejects?|manual(?:ly)?"
                                   ).pattern, clause, re.I) and not re.search(
                        r"\b(keep|add|set|enforce)\b", clause, re.I):
                    continue
                out.append(" ".join(clause.split()))
    return out


def ci_proposals(text: str) -> list[str]:
    proposed, _ = proposed_mentions(claims(text), CI)
    return proposed


# lower-cased, case-sensitive variants of the heavy patterns (matched on lower-cased text)
_CHANGE_L = lowered(CHANGE_VERB)
_OBSERVE_L = lowered(OBSERVE)
_BOUNDED_L = lowered(BOUNDED_PROSE)
_BOUNDED_HINT_L = lowered(_BOUNDED_HINT)
_UNBOUNDED_L = lowered(UNBOUNDED_PROSE)
_UNBOUNDED_HINT_L = lowered(_UNBOUNDED_HINT)
_DROPPED_L = lowered(_DROPPED)
_BUDGET_L = lowered(BUDGET)
