"""Code blocks parsed by their language, and what the proposed code does.

A tagged block is parsed as its tag says (a block tagged with the wrong language fails);
an untagged block is sniffed (Python, SQL, JSON, YAML, shell, JavaScript…) and parsed as
what it evidently is. Python goes through ``ast``, SQL through sqlglot, JSON, YAML and
TOML through their parsers. The parsed code also tells whether it caches (decorators,
cachetools, Redis/memcached calls, Cache-Control headers), how entries expire, whether it
does network I/O and whether it handles that I/O's failure.
"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache

import yaml

from agent.checks.text import CodeBlock

PYTHON = {"python", "py", "python3", "py3", "ipython", "pycon"}
SQL = {"sql", "postgres", "postgresql", "psql", "pgsql", "sqlite", "mysql", "plpgsql"}
SHELL = {"bash", "sh", "shell", "zsh", "console", "shell-session"}
JS = {"javascript", "js", "ts", "typescript", "jsx", "tsx", "node", "mjs"}
NO_PARSER = {"text", "txt", "plain", "plaintext", "output", "log", "diff", "http", "nginx",
             "dockerfile", "ini", "conf", "hcl", "terraform", "go", "java", "ruby", "rb",
             "php", "rust", "c", "cpp", "csharp", "vcl", "apache", "caddyfile", "promql",
             "markdown", "md", "html", "xml", "css", "graphql", "make", "makefile", ""}


@dataclass
class BlockReport:
    index: int
    tag: str
    language: str
    problem: str | None = None
    caches: list[str] = field(default_factory=list)
    bounded: list[str] = field(default_factory=list)
    unbounded: list[str] = field(default_factory=list)
    io: list[str] = field(default_factory=list)
    handled: bool = False
    ddl: bool = False


def _sql_dialect(code: str, hint: str) -> str | None:
    if hint in ("postgres", "postgresql", "psql", "pgsql", "plpgsql"):
        return "postgres"
    if hint in ("sqlite", "mysql"):
        return hint
    if re.search(r"\bCONCURRENTLY\b|::\w|\bILIKE\b|\bJSONB?\b|\bEXPLAIN \(", code, re.I):
        return "postgres"
    return None


def parse_sql(code: str, hint: str = "") -> str | None:
    import logging

    import sqlglot
    from sqlglot.errors import ParseError, TokenError

    # sqlglot logs statements it only knows as commands (CREATE EXTENSION …): not our output
    logging.getLogger("sqlglot").setLevel(logging.ERROR)

    dialect = _sql_dialect(code, hint)
    # psql meta-commands and EXPLAIN option lists are not SQL statements
    body = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith("\\"))
    try:
        for statement in sqlglot.parse(body, read=dialect):
            if statement is None:
                continue
        return None
    except (ParseError, TokenError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"sql block does not parse ({first[:120]})"


def parse_python(code: str) -> str | None:
    try:
        ast.parse(code)
    except SyntaxError as exc:
        return f"python block does not parse (line {exc.lineno}: {exc.msg})"
    return None


def parse_json(code: str) -> str | None:
    try:
        json.loads(code)
    except json.JSONDecodeError as exc:
        return f"json block does not parse (line {exc.lineno}: {exc.msg})"
    return None


def parse_yaml(code: str) -> str | None:
    try:
        list(yaml.safe_load_all(code))
    except yaml.YAMLError as exc:
        return f"yaml block does not parse ({str(exc).splitlines()[0]})"
    return None


def parse_toml(code: str) -> str | None:
    try:
        tomllib.loads(code)
    except tomllib.TOMLDecodeError as exc:
        return f"toml block does not parse ({exc})"
    return None


def parse_shell(code: str) -> str | None:
    """A light shell check: balanced quotes, brackets, and no Python/JS constructs."""
    for line in code.splitlines():
        s = line.strip()
        if re.match(r"(def|class)\s+\w+.*:\s*$|(from\s+\w[\w.]*\s+)?import\s+\w+(\s+as\s+\w+)?$"
                    r"|@\w[\w.]*(\(.*\))?$|return\b", s):
            return f"not shell: {s[:60]!r} is Python"
        if re.match(r"(const|let|var|function)\s+\w+", s):
            return f"not shell: {s[:60]!r} is JavaScript"
    if code.count("'") % 2 or code.count('"') % 2:
        return "shell block has an unclosed quote"
    return None


def parse_js(code: str) -> str | None:
    """Bracket balance with strings, template literals and comments skipped."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[tuple[str, int]] = []
    i, line, n = 0, 1, len(code)
    while i < n:
        ch = code[i]
        if ch == "\n":
            line += 1
        if code.startswith("//", i):
            j = code.find("\n", i)
            i = n if j < 0 else j
            continue
        if code.startswith("/*", i):
            j = code.find("*/", i + 2)
            line += code[i:j].count("\n")
            i = n if j < 0 else j + 2
            continue
        if ch in "'\"`":
            j = i + 1
            while j < n and code[j] != ch:
                j += 2 if code[j] == "\\" else 1
            line += code[i:j].count("\n")
            i = j + 1
            continue
        if ch in "([{":
            stack.append((ch, line))
        elif ch in ")]}":
            if not stack or stack[-1][0] != pairs[ch]:
                return f"javascript block does not parse (line {line}: unexpected {ch!r})"
            stack.pop()
        i += 1
    if stack:
        return f"javascript block does not parse (line {stack[-1][1]}: {stack[-1][0]!r} never closed)"
    return None


_SQL_START = re.compile(r"^\s*(?:--.*\n\s*)*(SELECT|WITH|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|"
                        r"EXPLAIN|VACUUM|ANALYZE|SET|BEGIN|COMMIT|REINDEX)\b", re.I)
_PY_HINT = re.compile(r"^\s*(def |class |import |from \w[\w.]* import |@\w|async def |"
                      r"if .*:\s*$|for .* in .*:\s*$|return\b|try:|with .*:\s*$)", re.M)
_JS_HINT = re.compile(r"^\s*(const |let |var |function\b|export |import .* from ['\"]|"
                      r"module\.exports|app\.(use|get)\(|self\.addEventListener)", re.M)
_SHELL_HINT = re.compile(r"^\s*(\$ |pip |npm |curl |k6 |locust |export \w+=|sudo |docker |"
                         r"kubectl |git |python -m |py-spy |psql )", re.M)


def sniff(code: str) -> str:
    """The language an untagged block evidently is."""
    s = code.strip()
    if not s:
        return "text"
    if s[0] in "{[":
        try:
            json.loads(s)
            return "json"
        except ValueError:
            pass
    if _SQL_START.match(s):
        return "sql"
    if _JS_HINT.search(s):
        return "javascript"
    if _PY_HINT.search(s):
        return "python"
    if _SHELL_HINT.search(s):
        return "shell"
    if re.match(r"^[\w.-]+:\s", s) and not re.search(r"\(.*\)\s*$", s.splitlines()[0]):
        return "yaml"
    if re.match(r"^\[[\w.]+\]\s*$", s.splitlines()[0]):
        return "toml"
    if re.search(r"^\s*\w+\s*=\s*.+$", s, re.M) and re.search(r"\w+\(.*\)", s):
        return "python"
    return "text"


def language_of(block: CodeBlock) -> str:
    tag = block.tag
    if tag in PYTHON:
        return "python"
    if tag in SQL:
        return "sql"
    if tag in ("json", "jsonc"):
        return "json"
    if tag in ("yaml", "yml"):
        return "yaml"
    if tag == "toml":
        return "toml"
    if tag in SHELL:
        return "shell"
    if tag in JS:
        return "javascript"
    if not tag:
        return sniff(block.code)
    return "text"


def parse_block(block: CodeBlock) -> tuple[str, str | None]:
    """(language, problem or None) of a block: parsed as tagged, or as sniffed when untagged."""
    return _parse_block(block.tag, block.code)


@lru_cache(maxsize=256)
def _parse_block(tag: str, code: str) -> tuple[str, str | None]:
    block = CodeBlock(0, tag, code)
    language = language_of(block)
    problem = None
    if language == "python":
        if block.tag in ("pycon",) or code.lstrip().startswith(">>>"):
            return language, None
        problem = parse_python(code)
    elif language == "sql":
        problem = parse_sql(code, block.tag)
    elif language == "json":
        problem = parse_json(code)
    elif language == "yaml":
        problem = parse_yaml(code)
    elif language == "toml":
        problem = parse_toml(code)
    elif language == "shell":
        problem = parse_shell(code)
    elif language == "javascript":
        problem = parse_js(code)
    if problem and block.tag:
        # a block tagged with the wrong language: say what it evidently is
        other = sniff(code)
        if other not in (language, "text"):
            problem += f"; it looks like {other}: tag it ```{other}``` and make it valid"
    return language, problem


# --------------------------------------------------------------------------- what code does

_CACHE_DECORATORS = {"lru_cache", "cache", "cached", "memoize", "memoized", "cached_property",
                     "ttl_cache", "alru_cache", "cache_page", "cache_control", "cache_response"}
_IO_MODULES = ("redis", "requests", "httpx", "aiohttp", "urllib", "urlopen", "boto3", "smtplib",
               "memcache", "pymemcache", "kafka", "pika", "celery", "grpc", "socket", "psycopg",
               "asyncpg", "stripe", "sqs", "sns", "send_mail", "fetch", "axios", "client")
_IO_CALL = re.compile(
    r"(?<![\w.])(?:redis|r|rc|cache|redis_client|client|http_client|session|requests|httpx|http|"
    r"conn|channel|producer|queue|mc|memcache|stripe|s3|sqs|smtp|mail|api|upstream|provider|"
    r"payments?|rates_api)\.(?!objects)"
    r"(?:get|set|setex|hget|hset|mget|delete|publish|lpush|rpush|xadd|post|put|request|"
    r"send|send_message|enqueue|delay|apply_async|basic_publish|charge|create|fetch|incr|"
    r"expire|pipeline|execute_command|urlopen)\b", re.I)
_IO_BARE = re.compile(r"\b(?:requests|httpx)\.(?:get|post|put|request|delete)\(|\burlopen\(|"
                      r"\bfetch\(|\baxios\.|\.delay\(|\.apply_async\(|\bsend_mail\(|\.enqueue\(",
                      re.I)
_TIMEOUT_KW = re.compile(r"\b(?:socket_timeout|socket_connect_timeout|timeout|connect_timeout|"
                         r"read_timeout)\s*=\s*(?!None\b)[\w.(]", re.I)


def _dotted(node: ast.AST) -> str:
    """``self.client`` for an attribute chain, the name for a name, '' otherwise."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    elif isinstance(node, ast.Call):
        parts.append(_dotted(node.func) + "()")
    return ".".join(reversed(parts))


def analyse_python(code: str, report: BlockReport) -> None:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and node.handlers:
            report.handled = True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                if name in _CACHE_DECORATORS:
                    report.caches.append(f"@{name} on {node.name}()")
                    if isinstance(dec, ast.Call):
                        for kw in dec.keywords:
                            if kw.arg in ("ttl", "timeout", "expire", "expires", "max_age") and not (
                                    isinstance(kw.value, ast.Constant) and kw.value.value is None):
                                report.bounded.append(f"{kw.arg}= on @{name}")
                            elif kw.arg in ("timeout", "ttl"):
                                report.unbounded.append(f"{kw.arg}=None")
                        if name == "cache_page" and dec.args:
                            report.bounded.append("cache_page timeout")
                    if name in ("ttl_cache",):
                        report.bounded.append("ttl_cache")
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("TTLCache", "TLRUCache"):
                report.caches.append(name)
                report.bounded.append(f"{name} ttl")
            elif name in ("LRUCache", "LFUCache"):
                report.caches.append(name)
            elif name in ("setex", "psetex", "expire", "pexpire", "expireat"):
                report.bounded.append(f".{name}()")
            elif name in ("set", "add") and isinstance(func, ast.Attribute):
                owner = _dotted(func.value).lower()
                if re.search(r"redis|cache|\br\b|mc|memcache|client", owner):
                    report.caches.append(f"{owner}.{name}()")
                    kws = {kw.arg: kw.value for kw in node.keywords}
                    bounded = [k for k in ("ex", "px", "timeout", "ttl", "exat") if k in kws and not (
                        isinstance(kws[k], ast.Constant) and kws[k].value is None)]
                    none_kw = [k for k in ("timeout", "ex", "ttl") if k in kws and (
                        isinstance(kws[k], ast.Constant) and kws[k].value is None)]
                    if bounded or (len(node.args) >= 3 and not (
                            isinstance(node.args[2], ast.Constant) and node.args[2].value is None)):
                        report.bounded.append(f"{owner}.{name}() with an expiry")
                    if none_kw or (len(node.args) >= 3 and isinstance(node.args[2], ast.Constant)
                                   and node.args[2].value is None):
                        report.unbounded.append(f"{owner}.{name}(…, None)")
            elif name in ("delete", "unlink", "invalidate", "cache_clear", "delete_many", "purge",
                          "delete_memoized", "evict", "pop") and isinstance(func, ast.Attribute):
                report.bounded.append(f".{name}() on write")
            elif name == "setdefault" or name == "get":
                pass
            text = (_dotted(func.value) + "." + name if isinstance(func, ast.Attribute)
                    else name) + "("
            if (_IO_CALL.search(text) or _IO_BARE.search(text)) and name not in (
                    "cache_clear", "Redis", "StrictRedis", "from_url"):
                report.io.append(ast.unparse(node)[:80])
            for kw in node.keywords:
                if kw.arg in ("socket_timeout", "timeout", "connect_timeout") and not (
                        isinstance(kw.value, ast.Constant) and kw.value.value is None):
                    report.__dict__.setdefault("timeouts", []).append(kw.arg)
    if re.search(r"Cache-Control", code):
        analyse_headers(code, report)


_MAX_AGE = re.compile(r"\b(?:s-)?max-?age\s*[=:]\s*\d+|\bmaxAge\s*:\s*['\"]?\d+|"
                      r"\bexpires?\s*[=:(]\s*\d|immutable", re.I)


def _long_lived(code: str) -> bool:
    """A max-age of a month or more on content whose URL does not change with it."""
    ages = [int(x) for x in re.findall(r"max-?age\s*[=:]\s*['\"]?(\d+)", code, re.I)]
    return bool(ages) and max(ages) >= 30 * 86400 and not re.search(
        r"immutable|fingerprint|hash|version", code, re.I)


def analyse_headers(code: str, report: BlockReport) -> None:
    for match in re.finditer(r"Cache-Control['\"]?\s*[:=,]\s*['\"]?([^'\"\n]*)", code, re.I):
        value = match.group(1).lower()
        if "no-store" in value or ("no-cache" in value and "max-age" not in value):
            continue
        report.caches.append(f"Cache-Control: {value.strip()[:40]}")
        if re.search(r"(s-)?max-age\s*=\s*[1-9]", value) and not _long_lived(value):
            report.bounded.append("max-age")
        else:
            report.unbounded.append("Cache-Control without max-age")


_TEST_CODE = re.compile(r"\bdef test_|TestCase\b|assertNumQueries|import pytest|k6/http|"
                        r"from locust|benchmark\(|self\.client\.", re.I)


def analyse(block: CodeBlock, language: str) -> BlockReport:
    """What the block does (cached by its content: the same block is analysed once)."""
    from dataclasses import replace

    return replace(_analyse(block.tag, block.code, language), index=block.index)


@lru_cache(maxsize=256)
def _analyse(tag: str, code: str, language: str) -> BlockReport:
    report = BlockReport(0, tag, language)
    if _TEST_CODE.search(code):
        report.__dict__["test"] = True
    if language == "python":
        analyse_python(code, report)
    elif language == "sql":
        report.ddl = True
    else:
        if re.search(r"Cache-Control|maxAge|max-age|caches\.open|cache\.put", code, re.I):
            report.caches.append("HTTP/browser cache")
            if _long_lived(code):
                report.unbounded.append("a max-age of a year without versioned URLs")
            elif _MAX_AGE.search(code) or re.search(r"CACHE_VERSION|-v\d+['\"]|\bversion\b|"
                                                    r"caches\.delete|fingerprint|\[hash\]|"
                                                    r"contenthash", code, re.I):
                report.bounded.append("max-age or versioned cache")
        if language in ("javascript",) and _IO_BARE.search(code):
            report.io.append("fetch")
        report.handled = bool(re.search(r"\bcatch\b|\btry\b|\.catch\(|timeout", code))
    return report
