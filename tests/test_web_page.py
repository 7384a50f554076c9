"""The web chat page end to end: ``perfagent serve`` in a subprocess, driven by Debian's
Chromium through Playwright, the way a user's browser meets it.

The page is plain JavaScript with no build step, so these tests are also its
only check: they exercise the event-stream reader, the Markdown renderer and
the error paths in a real browser against the real server.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, require_module, unavailable
from tests.serving import free_port
from tests.test_cli import CHECK_NAMES

CHROMIUM = Path("/usr/bin/chromium")
QUESTION = "Why is examples/orders_workload.py slow?"
CHECK_STATUSES = {"pass", "fail", "not_applicable"}


def artifacts_dir() -> Path:
    """Where screenshots go: ``PERFAGENT_ARTIFACTS``, by default ``test-artifacts/`` in the repo."""
    folder = Path(os.environ.get("PERFAGENT_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def perfagent_serve(log: Path, env: dict[str, str] | None = None,
                    timeout: float = 60.0) -> Iterator[str]:
    """``perfagent serve`` on a free loopback port until the block ends; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {**os.environ, "PERFAGENT_WORKSPACE": str(REPO), **(env or {})}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=environment, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    pytest.fail(f"perfagent serve exited with {process.returncode}:\n"
                                f"{log.read_text(errors='replace')}")
                try:
                    with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                        if json.load(response)["status"] == "ok":
                            break
                except (urllib.error.URLError, ConnectionError):
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"perfagent serve did not answer /healthz in {timeout:.0f} s:\n"
                                f"{log.read_text(errors='replace')}")
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium; Playwright never downloads a browser of its own here."""
    require_module("playwright")
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (own storage) that fails the test on any uncaught script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, f"script errors on the page: {errors}"


# Records what the first turn showed while it was still running, so the test can
# tell streamed output from what arrived with the final result.
WATCH_RUNNING_TURN = """() => {
  window.seenWhileRunning = {tool: false, text: false, progress: false};
  new MutationObserver(() => {
    const turn = document.querySelector('.turn');
    if (!turn || turn.dataset.state !== 'running') return;
    const seen = window.seenWhileRunning;
    seen.tool ||= Boolean(turn.querySelector('.tool[data-tool="profile_python"]'));
    seen.progress ||= Boolean(turn.querySelector('.tool progress[value]'));
    seen.text ||= turn.querySelector('.answer').textContent.includes('offline engine');
  }).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def read_turn(page: Any) -> dict[str, Any]:
    """What the (last) finished turn on screen shows: checks, measurements, tools, findings."""
    return page.evaluate("""() => {
      const turn = [...document.querySelectorAll('.turn')].at(-1);
      const texts = (sel) => [...turn.querySelectorAll(sel)].map((e) => e.textContent.trim());
      return {
        state: turn.dataset.state,
        question: turn.querySelector('.msg.user .bubble').textContent,
        checks: [...turn.querySelectorAll('.check')].map((c) => ({
          name: c.dataset.check, status: c.dataset.status, text: c.textContent,
          title: c.querySelector('button').title})),
        measurements: [...turn.querySelectorAll('.measurements-table tbody tr')].map((r) =>
          [...r.children].map((cell) => cell.textContent.trim())),
        tools: [...turn.querySelectorAll('.tool')].map((t) => ({
          name: t.dataset.tool, state: t.dataset.state, text: t.textContent})),
        findings: texts('.finding-kind'),
        headings: texts('.answer h2'),
        answerTables: turn.querySelectorAll('.answer table').length,
        codeBlocks: turn.querySelectorAll('.answer pre code').length,
      };
    }""")


def assert_measured_turn(turn: dict[str, Any]) -> None:
    assert turn["state"] == "done"
    assert turn["question"] == QUESTION
    assert [c["name"] for c in turn["checks"]] == CHECK_NAMES
    for check in turn["checks"]:
        assert check["status"] in CHECK_STATUSES
        assert check["status"].replace("_", " ") in check["text"]
        assert check["title"], f"{check['name']} has no evidence or feedback on hover"
    rows = {row[0]: row for row in turn["measurements"]}
    assert {"wall_time", "cpu_time"} <= set(rows)
    for name in ("wall_time", "cpu_time"):
        _, value, unit, target, budget, passed = rows[name]
        assert float(value.replace(",", "")) > 0 and unit == "ms"
        assert target.endswith("orders_workload.py")
        assert budget == "—" and passed == "—"
    assert turn["tools"][0]["name"] == "profile_python"
    assert {t["state"] for t in turn["tools"]} == {"ok"}
    assert "repeated_query" in turn["findings"]
    assert "Baseline (measured)" in turn["headings"] and turn["answerTables"] >= 1
    assert turn["codeBlocks"] >= 2


@pytest.mark.slow
def test_a_turn_streams_tools_checks_and_results_and_is_kept_in_the_thread(
        page: Any, tmp_path: Path) -> None:
    with perfagent_serve(tmp_path / "serve.log") as url:
        page.goto(url)
        page.evaluate(WATCH_RUNNING_TURN)
        page.fill("#message", QUESTION)
        page.press("#message", "Enter")

        # The tool call shows while the turn runs, with its main argument.
        tool = page.wait_for_selector('.turn[data-state="running"] .tool[data-tool="profile_python"]',
                                      timeout=90_000)
        assert "script: examples/orders_workload.py" in tool.text_content()
        page.wait_for_selector('.turn[data-state="done"]', timeout=90_000)
        seen = page.evaluate("window.seenWhileRunning")
        assert seen == {"tool": True, "text": True, "progress": True}, seen
        assert page.input_value("#message") == ""
        assert_measured_turn(read_turn(page))

        # A check explains itself when clicked.
        page.click('.check[data-check="baseline_established"] button')
        assert "Evidence:" in page.text_content(".check-detail")

        # The thread is listed (titled by its question) and selected, and the address names it.
        item = page.wait_for_selector(f'.thread-item[aria-current="true"]:has-text("{QUESTION}")')
        thread_id = item.get_attribute("data-thread-id")
        assert page.evaluate("location.hash") == f"#thread={thread_id}"
        assert page.text_content("#thread-title") == QUESTION

        shot = artifacts_dir() / "web_chat.png"
        height = page.evaluate("document.getElementById('conversation').scrollHeight")
        page.set_viewport_size({"width": 1280, "height": height + 160})
        page.screenshot(path=str(shot), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 900})
        assert shot.stat().st_size > 10_000

        # Reloading keeps the thread (its address); a fresh visit opens it from the list.
        page.reload()
        page.wait_for_selector('.turn[data-state="done"]')
        assert_measured_turn(read_turn(page))
        page.goto(url)
        assert page.is_visible("#welcome")
        page.click(f'.thread-item[data-thread-id="{thread_id}"]')
        page.wait_for_selector('.turn[data-state="done"]')
        assert_measured_turn(read_turn(page))
        assert page.locator(".turn").count() == 1


def test_api_key_and_busy_errors_are_explained(page: Any, tmp_path: Path) -> None:
    env = {"PERFAGENT_API_KEYS": "right-key,other-key", "PERFAGENT_MAX_RUNS": "1"}
    with perfagent_serve(tmp_path / "serve.log", env) as url:
        page.goto(url)
        # Without a key the thread list is refused: the page asks for one.
        page.wait_for_selector("#banner:not([hidden]):has-text('API key')")
        assert page.evaluate("document.getElementById('settings').open")

        page.fill("#api-key", "wrong-key")
        page.click("#settings-form button[type=submit]")
        # The key is refused too: the page asks again (and moves the focus to the key field).
        page.wait_for_selector("#banner:not([hidden]):has-text('API key')")
        page.fill("#message", "hello")
        page.press("#message", "Shift+Enter")  # a new line, not a send
        assert page.input_value("#message") == "hello\n" and page.locator(".turn").count() == 0
        page.fill("#message", "hello")
        page.press("#message", "Enter")
        error = page.wait_for_selector('.turn[data-state="error"] .error-box')
        assert "a valid API key is required" in error.text_content()
        assert "Authorization: Bearer" in error.text_content()
        assert page.evaluate("document.activeElement.id") == "api-key"
        assert page.input_value("#message") == "hello"  # ready to send again

        page.fill("#api-key", "right-key")
        page.click("#settings-form button[type=submit]")
        page.wait_for_selector("#banner", state="hidden")
        page.wait_for_selector("#threads-empty:not([hidden])")
        assert page.evaluate("localStorage.getItem('perfagent.apiKey')") == "right-key"

        # With the one run slot taken, the page says the server is busy.
        with held_run_slot(url, "right-key") as held_thread:
            page.press("#message", "Enter")
            page.wait_for_selector("#banner:not([hidden]):has-text('busy')")
            error = page.locator('.turn[data-state="error"] .error-box').last.text_content()
            assert "already running" in error and "PERFAGENT_MAX_RUNS" in error

        # The page lists this key's threads, and only them: not another key's.
        other_thread = new_thread(url, "other-key")
        page.reload()
        page.wait_for_selector(f'.thread-item[data-thread-id="{held_thread}"]')
        assert page.locator(f'.thread-item[data-thread-id="{other_thread}"]').count() == 0


def new_thread(url: str, key: str) -> str:
    request = urllib.request.Request(f"{url}/v1/threads", data=b"{}", method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["thread_id"]


@contextmanager
def held_run_slot(url: str, key: str) -> Iterator[str]:
    """A turn streaming on its own connection, holding a run slot until the block ends.

    The turn load-tests the server's own liveness route for longer than the test
    needs, so the slot cannot come free on its own in the meantime.
    """
    host, port = url.removeprefix("http://").split(":")
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    api = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        api.request("POST", "/v1/threads", body="{}", headers=headers)
        thread_id = json.loads(api.getresponse().read())["thread_id"]
        api.request("POST", f"/v1/threads/{thread_id}/runs/stream",
                    body=json.dumps({"message": f"How fast is {url}/healthz at 2 rps for 60s?"}),
                    headers=headers)
        stream = api.getresponse()
        assert stream.status == 200
        assert stream.readline().startswith(b"event: run_start")  # the slot is now taken
        yield thread_id
    finally:
        api.close()  # disconnecting cancels the turn and frees the slot


MARKDOWN_SAMPLE = r"""# Title
Text with **bold**, *italic*, _also italic_, `a <b> code` and wall_time left alone.
Second line of the same paragraph.

> quoted **words**

1. first
2. second
   - nested with [a link](https://example.test/a?b=1&c=2)
3. third

- [bad link](javascript:alert(1)) and <script>alert(1)</script>
- <img src=x onerror="alert(1)"> and [quote](https://x.test/"onmouseover="alert(1))

| Metric | Value |
|:---|---:|
| p95 \| ms | `a|b` |

```python
if a < b:
    print("<done>")
```
"""


def test_markdown_renderer_is_complete_and_safe(page: Any, tmp_path: Path) -> None:
    with perfagent_serve(tmp_path / "serve.log") as url:
        page.goto(url)
        shown = page.evaluate("""async (source) => {
          const { renderMarkdown } = await import('/static/app.js');
          const box = document.createElement('div');
          box.innerHTML = renderMarkdown(source);
          const all = (sel) => [...box.querySelectorAll(sel)];
          return {
            tags: [...new Set(all('*').map((e) => e.tagName.toLowerCase()))].sort(),
            attributes: [...new Set(all('*').flatMap((e) => e.getAttributeNames()))].sort(),
            h1: box.querySelector('h1').textContent,
            strong: all('strong').map((e) => e.textContent),
            em: all('em').map((e) => e.textContent),
            code: all(':not(pre) > code').map((e) => e.textContent),
            paragraph: box.querySelector('p').innerHTML,
            quote: box.querySelector('blockquote').innerHTML,
            ordered: all('ol > li').length,
            nested: box.querySelector('ol ul li').textContent,
            links: all('a').map((a) => a.href),
            bullets: all(':scope > ul > li').map((e) => e.textContent),
            cells: all('td').map((e) => e.textContent),
            align: all('th').map((e) => e.style.textAlign),
            pre: box.querySelector('pre').textContent,
            lang: box.querySelector('pre').dataset.lang,
          };
        }""", MARKDOWN_SAMPLE)
    assert shown["tags"] == ["a", "blockquote", "br", "code", "div", "em", "h1", "li", "ol", "p",
                             "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul"]
    assert set(shown["attributes"]) <= {"class", "data-lang", "href", "rel", "style", "target"}
    assert shown["h1"] == "Title"
    assert shown["strong"] == ["bold", "words"]
    assert shown["em"] == ["italic", "also italic"]
    assert shown["code"] == ["a <b> code", "a|b"]
    assert "wall_time left alone.<br>" in shown["paragraph"]
    assert shown["quote"] == "<p>quoted <strong>words</strong></p>"
    assert shown["ordered"] == 3 and shown["nested"] == "nested with a link"
    assert shown["links"] == ["https://example.test/a?b=1&c=2"]
    assert "<script>alert(1)</script>" in shown["bullets"][0]
    assert "javascript:alert(1)" in shown["bullets"][0]  # shown as text, never a link
    assert '<img src=x onerror="alert(1)">' in shown["bullets"][1]
    assert shown["cells"] == ["p95 | ms", "a|b"]
    assert shown["align"] == ["left", "right"]
    assert shown["pre"] == 'if a < b:\n    print("<done>")' and shown["lang"] == "python"
