// The perfagent chat page: thread list, streamed answers, tool calls, checks and results.
//
// One ES module, no build step and no third-party code: the page must work on an
// offline machine, and a few hundred lines are easier to audit than a vendored
// library. It talks to the HTTP API the same server exposes (same origin):
//   GET  v1/threads                      the thread list, newest first
//   POST v1/threads                      a new, empty thread
//   GET  v1/threads/{id}                 a thread's messages and past TurnResults
//   POST v1/threads/{id}/runs/stream     one turn, as a text/event-stream of run events
// The stream is read with fetch because EventSource cannot send a POST body or an
// Authorization header.

// ------------------------------------------------------------------ Markdown

const HTML_ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Text made safe to place in HTML content or in a quoted attribute. */
export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]);
}

const FENCE_OPEN = /^( {0,3})(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:\s+(.*?))?(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}>/;
const LIST_ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:( +)(.*)|$)/;
const TABLE_DELIMITER = /^\s*\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$/;
const SAFE_URL = /^https?:\/\/[^\s<>"']+$/i;

/**
 * Markdown to HTML, safe by construction: every piece of source text is escaped
 * before it reaches the output, the only tags are the ones written here, and links
 * are kept only for http(s) URLs. Supports what the agent writes: headings,
 * paragraphs, bold and italic, inline code, fenced code blocks, bullet and numbered
 * lists (nested), block quotes, tables, horizontal rules and links. An unclosed
 * code fence runs to the end, so a half-streamed answer renders sensibly.
 */
export function renderMarkdown(source) {
  const lines = String(source ?? "").replace(/\u0000/g, "").split(/\r\n|\r|\n/);
  return renderBlocks(lines, false);
}

function startsBlock(lines, i) {
  const line = lines[i];
  return FENCE_OPEN.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line)
    || LIST_ITEM.test(line) || isTableStart(lines, i);
}

function isTableStart(lines, i) {
  return lines[i].includes("|") && i + 1 < lines.length && lines[i + 1].includes("|")
    && TABLE_DELIMITER.test(lines[i + 1]);
}

/** Block-level pass. ``tight`` leaves paragraphs unwrapped (items of a tight list). */
function renderBlocks(lines, tight) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (/^\s*$/.test(line)) {
      i += 1;
    } else if ((m = FENCE_OPEN.exec(line))) {
      i = renderFence(lines, i, m, out);
    } else if ((m = HEADING.exec(line))) {
      const level = m[1].length;
      out.push(`<h${level}>${renderInline(m[2] ?? "")}</h${level}>`);
      i += 1;
    } else if (RULE.test(line)) {
      out.push("<hr>");
      i += 1;
    } else if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) {
        inner.push(lines[i].replace(/^ {0,3}> ?/, ""));
        i += 1;
      }
      out.push(`<blockquote>${renderBlocks(inner, false)}</blockquote>`);
    } else if (isTableStart(lines, i)) {
      i = renderTable(lines, i, out);
    } else if (LIST_ITEM.test(line)) {
      i = renderList(lines, i, out);
    } else {
      const para = [line.trim()];
      i += 1;
      while (i < lines.length && !/^\s*$/.test(lines[i]) && !startsBlock(lines, i)) {
        para.push(lines[i].trim());
        i += 1;
      }
      // Soft line breaks stay visible: in a chat, a line break the writer typed is meant.
      const html = para.map(renderInline).join("<br>\n");
      out.push(tight ? html : `<p>${html}</p>`);
    }
  }
  return out.join("\n");
}

function renderFence(lines, start, open, out) {
  const indent = open[1].length;
  const fence = open[2];
  const lang = open[3].replace(/[^\w+#.-]/g, "").slice(0, 20);
  const close = new RegExp(`^ {0,3}${fence[0] === "`" ? "`" : "~"}{${fence.length},}\\s*$`);
  const body = [];
  let i = start + 1;
  while (i < lines.length && !close.test(lines[i])) {
    body.push(lines[i].replace(new RegExp(`^ {0,${indent}}`), ""));
    i += 1;
  }
  if (i >= lines.length) {
    while (body.length && body[body.length - 1].trim() === "") body.pop(); // still streaming
  }
  const label = lang ? ` data-lang="${escapeHtml(lang)}"` : "";
  const cls = lang ? ` class="language-${escapeHtml(lang)}"` : "";
  out.push(`<pre${label}><code${cls}>${escapeHtml(body.join("\n"))}</code></pre>`);
  return i + 1; // past the closing fence (or the end, when it never came)
}

/** Splits a table row on the pipes that are neither escaped nor inside a code span. */
function tableCells(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  const cells = [];
  let cell = "";
  let inCode = false;
  for (let k = 0; k < row.length; k += 1) {
    const c = row[k];
    if (c === "\\" && row[k + 1] === "|") {
      cell += "\\|";
      k += 1;
    } else if (c === "`") {
      inCode = !inCode;
      cell += c;
    } else if (c === "|" && !inCode) {
      cells.push(cell.trim());
      cell = "";
    } else {
      cell += c;
    }
  }
  cells.push(cell.trim());
  return cells;
}

function renderTable(lines, start, out) {
  const header = tableCells(lines[start]);
  const aligns = tableCells(lines[start + 1]).map((d) => {
    const left = d.startsWith(":");
    const right = d.endsWith(":");
    if (left && right) return "center";
    if (right) return "right";
    return left ? "left" : "";
  });
  const cell = (tag, text, k) => {
    const align = aligns[k] ? ` style="text-align:${aligns[k]}"` : "";
    return `<${tag}${align}>${renderInline(text ?? "")}</${tag}>`;
  };
  const rows = [];
  let i = start + 2;
  while (i < lines.length && lines[i].includes("|") && !/^\s*$/.test(lines[i])) {
    const cells = tableCells(lines[i]);
    rows.push(`<tr>${header.map((_, k) => cell("td", cells[k], k)).join("")}</tr>`);
    i += 1;
  }
  out.push(`<div class="table-wrap"><table><thead><tr>${header.map((h, k) => cell("th", h, k)).join("")}`
    + `</tr></thead><tbody>${rows.join("")}</tbody></table></div>`);
  return i;
}

function renderList(lines, start, out) {
  const first = LIST_ITEM.exec(lines[start]);
  const ordered = /\d/.test(first[2]);
  const items = [];
  let loose = false;
  let blankBefore = false;
  let i = start;
  while (i < lines.length) {
    const m = LIST_ITEM.exec(lines[i]);
    if (!m || /\d/.test(m[2]) !== ordered || m[1].length > first[1].length + 3) break;
    loose ||= blankBefore; // items apart from each other make a loose list
    const gap = (m[3] ?? " ").length;
    const contentIndent = m[1].length + m[2].length + (gap > 4 ? 1 : gap);
    const body = [(gap > 4 ? " ".repeat(gap - 1) : "") + (m[4] ?? "")];
    i += 1;
    while (i < lines.length) {
      const line = lines[i];
      if (/^\s*$/.test(line)) {
        // A blank line continues the item only if indented content follows it.
        let next = i + 1;
        while (next < lines.length && /^\s*$/.test(lines[next])) next += 1;
        if (next < lines.length && lines[next].search(/\S/) >= contentIndent) {
          body.push("");
          i = next;
          loose = true;
          continue;
        }
        blankBefore = true;
        i = next;
        break;
      }
      if (line.search(/\S/) >= contentIndent) {
        body.push(line.slice(contentIndent));
      } else if (!startsBlock(lines, i) && !/^\s*$/.test(body[body.length - 1])) {
        body.push(line.trim()); // a lazy continuation of the item's paragraph
      } else {
        break;
      }
      i += 1;
    }
    items.push(body);
  }
  const html = items.map((body) => `<li>${renderBlocks(body, !loose)}</li>`).join("\n");
  const number = parseInt(first[2], 10);
  const startAttr = ordered && number !== 1 ? ` start="${number}"` : "";
  out.push(ordered ? `<ol${startAttr}>${html}</ol>` : `<ul>${html}</ul>`);
  return i;
}

/** Inline pass: code spans, links, bold and italic; everything else escaped. */
export function renderInline(text) {
  const held = [];
  const hold = (html) => `\u0000${held.push(html) - 1}\u0000`;
  let s = String(text);
  s = s.replace(/\\([\\`*_{}[\]()#+\-.!|>~])/g, (_, c) => hold(escapeHtml(c)));
  s = s.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, __, code) => {
    const trimmed = /^ .* $/.test(code) ? code.slice(1, -1) : code;
    return hold(`<code>${escapeHtml(trimmed)}</code>`);
  });
  s = s.replace(/<(https?:\/\/[^\s<>]+)>/gi, (_, url) => hold(link(url, escapeHtml(url))));
  s = s.replace(/\[([^\]\n]*)\]\(\s*<?([^\s)<>]*)>?(?:\s+"[^"]*")?\s*\)/g, (whole, label, url) => (
    SAFE_URL.test(url) ? hold(link(url, emphasis(escapeHtml(label)))) : whole));
  s = emphasis(escapeHtml(s));
  // Held pieces may hold others (a code span inside a link label): restore until none remain.
  while (s.includes("\u0000")) {
    s = s.replace(/\u0000(\d+)\u0000/g, (_, n) => held[Number(n)]);
  }
  return s;
}

function link(url, labelHtml) {
  return `<a href="${escapeHtml(url)}" target="_blank" rel="noopener noreferrer">${labelHtml}</a>`;
}

function emphasis(html) {
  return html
    .replace(/\*\*\*(?=\S)([\s\S]*?\S)\*\*\*/g, "<strong><em>$1</em></strong>")
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/\*(?=[^\s*])([\s\S]*?[^\s*])\*/g, "<em>$1</em>")
    // Underscores inside words (wall_time, cpu_hotspot) are names, not emphasis.
    .replace(/(^|[^\w])_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>");
}

// ------------------------------------------------------------------ server-sent events

/**
 * The events of a ``text/event-stream`` body, parsed as they arrive: yields
 * ``{type, data}`` with ``data`` the joined ``data:`` lines. ``id:``, ``retry:``
 * and comment lines (pings) are skipped.
 */
export async function* readEventStream(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "";
  let data = [];
  const lineBreak = /\r\n|\r|\n/g;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let consumed = 0;
      lineBreak.lastIndex = 0;
      let m;
      while ((m = lineBreak.exec(buffer))) {
        // A "\r" at the very end may be the first half of "\r\n": wait for more.
        if (m[0] === "\r" && m.index === buffer.length - 1) break;
        const line = buffer.slice(consumed, m.index);
        consumed = lineBreak.lastIndex;
        if (line === "") {
          if (data.length) yield { type: type || "message", data: data.join("\n") };
          type = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") type = value;
        else if (field === "data") data.push(value);
      }
      buffer = buffer.slice(consumed);
    }
  } finally {
    reader.releaseLock();
  }
}

// ------------------------------------------------------------------ HTTP API

const KEY_STORAGE = "perfagent.apiKey";
const MODEL_STORAGE = "perfagent.model";

/** An API failure in the server's own terms: ``{code, message, hint}`` and the HTTP status. */
export class ApiError extends Error {
  constructor(status, code, message, hint = "") {
    super(message);
    this.status = status;
    this.code = code;
    this.hint = hint;
  }
}

// What the page says when a status comes without the server's structured error body.
const STATUS_TEXT = {
  401: ["unauthorized", "The server needs a valid API key.",
    "Enter the key under Connection settings (it is kept in this browser)."],
  404: ["not_found", "The server does not know that thread.", "Start a new thread."],
  413: ["too_large", "The message is too large for the server.", "Send a shorter message."],
  429: ["busy", "The server is busy: every run slot is taken.", "Try again in a few seconds."],
};

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's error page, say): fall back to what the status means.
  }
  const [code, message, hint] = STATUS_TEXT[response.status]
    ?? ["http_error", `The server answered ${response.status} ${response.statusText}.`, ""];
  const error = body && typeof body.error === "object" && body.error ? body.error : {};
  const detail = body && Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : "";
  return new ApiError(response.status, error.code || code, error.message || detail || message,
    error.hint ?? hint);
}

/** ``fetch`` against the API with the stored key; a non-2xx answer throws :class:`ApiError`. */
async function api(path, { method = "GET", body, signal, accept = "application/json" } = {}) {
  const headers = { Accept: accept };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const key = localStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(path, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "unreachable", "Could not reach the perfagent server.",
      "Check that `perfagent serve` is still running, then try again.");
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

const threadPath = (id) => `v1/threads/${encodeURIComponent(id)}`;

// ------------------------------------------------------------------ small DOM helpers

const present = (children) => children.flat().filter((c) => c !== null && c !== undefined && c !== false);

/** Replace a node's children; strings become text nodes, null and false are left out. */
function fill(node, ...children) {
  node.replaceChildren(...present(children));
}

/** An element with attributes and children; strings become text nodes (never HTML). */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...present(children));
  return node;
}

const humanize = (name) => {
  const words = String(name).replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
};

function formatNumber(value, digits = 2) {
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits });
}

function formatDuration(ms) {
  if (ms < 1000) return `${formatNumber(ms, 0)} ms`;
  return `${formatNumber(ms / 1000, ms < 10000 ? 2 : 1)} s`;
}

function relativeTime(seconds) {
  const ago = Date.now() / 1000 - seconds;
  if (ago < 60) return "just now";
  if (ago < 3600) return `${Math.floor(ago / 60)} min ago`;
  if (ago < 86400) return `${Math.floor(ago / 3600)} h ago`;
  return new Date(seconds * 1000).toLocaleDateString();
}

/** The arguments worth showing for a tool call, most telling first. */
function argSummary(args) {
  const order = ["url", "script", "sql", "database", "path", "query", "to", "task", "rate", "vus",
    "duration"];
  const keys = Object.keys(args ?? {}).sort((a, b) => {
    const ra = order.indexOf(a) < 0 ? order.length : order.indexOf(a);
    const rb = order.indexOf(b) < 0 ? order.length : order.indexOf(b);
    return ra - rb;
  });
  return keys.slice(0, 3).map((key) => {
    const value = typeof args[key] === "string" ? args[key] : JSON.stringify(args[key]);
    return `${key}: ${value.length > 80 ? `${value.slice(0, 79)}…` : value}`;
  }).join(" · ");
}

const CHECK_ICONS = { pass: "✓", fail: "✗", not_applicable: "–" };
const CHECK_WORDS = { pass: "pass", fail: "fail", not_applicable: "not applicable" };

const NODE_WORDS = {
  prepare: "Preparing: persona, targets and knowledge",
  agent: "Thinking",
  tools: "Running tools",
  gate: "Weighing the checks",
  revise: "Revising the draft",
  finalize: "Finishing the answer",
};

// ------------------------------------------------------------------ one turn on screen

/**
 * One question and its answer as it unfolds: tool calls with progress, the draft
 * rendered as Markdown while it streams, the five checks, revisions, and after
 * ``final`` the measurements, findings and a summary line.
 */
class TurnView {
  constructor(message) {
    this.text = "";
    this.subText = "";
    this.tools = new Map();
    this.checkResults = new Map();
    this.lastRender = 0;
    this.renderTimer = 0;
    this.finished = false;

    // Not a live region: node changes come too fast to read out; the page announces
    // the start and the end of a turn instead.
    this.status = h("p", { class: "turn-status" });
    this.toolList = h("ol", { class: "tools", "aria-label": "Tool calls" });
    this.notes = h("ul", { class: "notes" });
    this.subBody = h("div", { class: "md" });
    this.subBox = h("details", { class: "subagent", hidden: true },
      h("summary", {}, "Sub-agent output"), this.subBody);
    this.answer = h("div", { class: "answer md" });
    this.checkList = h("ul", { class: "check-list", "aria-label": "Pre-response checks" });
    this.checkDetail = h("div", { class: "check-detail", hidden: true });
    this.checks = h("section", { class: "checks", hidden: true, "aria-label": "Pre-response checks" },
      h("h3", { class: "section-label" }, "Checks"), this.checkList, this.checkDetail);
    this.results = h("div", { class: "results" });
    this.meta = h("p", { class: "meta muted small" });
    this.errorBox = h("div", { class: "error-box", role: "alert", hidden: true });

    this.root = h("article", { class: "turn", dataset: { state: "running" } },
      h("div", { class: "msg user" },
        h("h2", { class: "visually-hidden" }, "You"),
        h("div", { class: "bubble" }, message)),
      h("div", { class: "msg assistant" },
        h("h2", { class: "visually-hidden" }, "Performance engineer"),
        h("div", { class: "card" },
          this.status, this.toolList, this.notes, this.subBox, this.answer, this.checks,
          this.results, this.errorBox, this.meta)));
    this.setStatus("Sending");
  }

  setStatus(text) {
    this.status.hidden = !text;
    fill(this.status, text ? [h("span", { class: "spinner", "aria-hidden": "true" }), text] : []);
  }

  /** Apply one run event. */
  handle(type, data) {
    const depth = Number(data.depth ?? 0);
    switch (type) {
      case "run_start":
        this.setStatus(`Started (${data.model})`);
        break;
      case "node_start":
        if (depth === 0) {
          this.setStatus(data.node.startsWith("check_") ? "Checking the draft"
            : NODE_WORDS[data.node] ?? humanize(data.node));
        }
        break;
      case "tool_call":
        this.toolCall(data, depth);
        break;
      case "tool_progress":
        this.toolProgress(data);
        break;
      case "tool_result":
        this.toolResult(data);
        break;
      case "check":
        if (depth === 0) this.check(data);
        break;
      case "text_delta":
        if (depth === 0) {
          this.text += data.text ?? "";
          this.scheduleRender();
        } else {
          this.subText += data.text ?? "";
          this.subBox.hidden = false;
          this.subBody.innerHTML = renderMarkdown(this.subText);
        }
        break;
      case "delegation":
        this.note("delegation",
          `Delegated to ${data.to ?? "a specialist"}${data.task ? `: ${data.task}` : ""}`);
        break;
      case "revision":
        this.revision(data, depth);
        break;
      case "final":
        this.final(data);
        break;
      case "error":
        this.fail(data);
        break;
      default:
        break; // an event type from a newer server: nothing to show for it yet
    }
    this.updated();
  }

  /** Tell the page this turn changed (it keeps the newest output in view). */
  updated() {
    this.root.dispatchEvent(new CustomEvent("turn-updated", { bubbles: true }));
  }

  toolCall(data, depth) {
    const progress = h("progress", { max: "1", "aria-label": `${data.name} progress` });
    const detail = h("span", { class: "tool-detail muted small" });
    const outcome = h("span", { class: "tool-outcome" },
      h("span", { class: "spinner", "aria-hidden": "true" }), "running");
    const row = h("li", {
      class: "tool", dataset: { tool: data.name, state: "running" },
      style: depth ? `margin-left:${depth * 1.25}rem` : null,
    },
    h("div", { class: "tool-head" },
      h("span", { class: "tool-name" }, data.name),
      depth ? h("span", { class: "tag" }, "sub-agent") : null,
      h("span", { class: "tool-args muted", title: JSON.stringify(data.args ?? {}, null, 1) },
        argSummary(data.args)),
      outcome),
    progress, detail);
    const tool = { row, progress, detail, outcome };
    this.tools.set(data.id ?? `${data.name}-${this.tools.size}`, tool);
    this.toolList.append(row);
    return tool;
  }

  toolProgress(data) {
    const tool = this.tools.get(data.id);
    if (!tool) return;
    if (typeof data.fraction === "number") tool.progress.value = Math.max(0, Math.min(1, data.fraction));
    if (data.text) tool.detail.textContent = data.text;
  }

  toolResult(data) {
    const tool = this.tools.get(data.id) ?? this.toolCall(data, Number(data.depth ?? 0));
    this.settleTool(tool, data);
  }

  settleTool(tool, data) {
    tool.row.dataset.state = data.ok ? "ok" : "failed";
    tool.progress.remove();
    fill(tool.outcome,
      h("span", { class: data.ok ? "ok" : "bad" }, data.ok ? "✓ ok" : "✗ failed"),
      typeof data.duration_ms === "number" ? ` · ${formatDuration(data.duration_ms)}` : "");
    if (!data.ok && data.error) {
      tool.detail.textContent = data.error;
      tool.detail.classList.add("bad");
    }
  }

  check(data) {
    this.checkResults.set(data.name, data);
    this.checks.hidden = false;
    const status = CHECK_WORDS[data.status] ? data.status : "not_applicable";
    const explain = [data.feedback, data.evidence].filter(Boolean).join(" — ");
    const chip = h("button", {
      type: "button", class: "check-chip", "aria-expanded": "false",
      title: explain || CHECK_WORDS[status],
      onclick: () => this.showCheck(data.name, chip),
    },
    h("span", { class: "check-icon", "aria-hidden": "true" }, CHECK_ICONS[status]),
    h("span", { class: "check-name" }, humanize(data.name)),
    h("span", { class: "check-status" }, CHECK_WORDS[status]));
    const item = h("li", { class: "check", dataset: { check: data.name, status } }, chip);
    const existing = this.checkList.querySelector(`[data-check="${CSS.escape(data.name)}"]`);
    if (existing) existing.replaceWith(item);
    else this.checkList.append(item);
  }

  showCheck(name, chip) {
    const open = chip.getAttribute("aria-expanded") === "true";
    for (const other of this.checkList.querySelectorAll(".check-chip")) {
      other.setAttribute("aria-expanded", "false");
    }
    if (open) {
      this.checkDetail.hidden = true;
      return;
    }
    const data = this.checkResults.get(name);
    chip.setAttribute("aria-expanded", "true");
    fill(this.checkDetail,
      h("strong", {}, `${humanize(name)}: ${CHECK_WORDS[data.status] ?? data.status}`),
      data.evidence ? h("p", {}, h("span", { class: "muted" }, "Evidence: "), data.evidence) : null,
      data.feedback ? h("p", {}, h("span", { class: "muted" }, "Feedback: "), data.feedback) : null,
      !data.evidence && !data.feedback ? h("p", { class: "muted" }, "No details given.") : null);
    this.checkDetail.hidden = false;
  }

  revision(data, depth) {
    if (depth > 0) {
      this.subText = "";
      return;
    }
    const failed = data.failed ?? [];
    const feedback = failed.map((name) => this.checkResults.get(name)?.feedback).filter(Boolean);
    this.note("revision", `Revising (round ${data.revision ?? "?"}): `
      + `${failed.length ? `checks ${failed.map(humanize).join(", ")} failed` : "checks failed"}`
      + `${feedback.length ? ` — ${feedback.join(" ")}` : ""}`);
    // The next text deltas are a new draft, checked afresh.
    this.text = "";
    this.render();
    this.checkResults.clear();
    this.checkList.replaceChildren();
    this.checkDetail.hidden = true;
  }

  note(kind, text) {
    this.notes.append(h("li", { class: `note ${kind}` }, text));
  }

  /** Render the draft now if the last render is old enough, else soon: the first delta
   * shows at once, later ones at most every 50 ms, so a long answer stays cheap. */
  scheduleRender() {
    const wait = 50 - (performance.now() - this.lastRender);
    if (wait <= 0) {
      this.render();
    } else if (!this.renderTimer) {
      this.renderTimer = setTimeout(() => this.render(), wait);
    }
  }

  render() {
    clearTimeout(this.renderTimer);
    this.renderTimer = 0;
    this.lastRender = performance.now();
    this.answer.innerHTML = renderMarkdown(this.text);
    this.updated();
  }

  /** The TurnResult: it replaces the streamed text (finalize may have added notes). */
  final(result) {
    this.finished = true;
    this.text = result.answer ?? this.text;
    this.render();
    if (!this.tools.size) {
      // A turn loaded from history: its tool calls come from the record, not from events.
      for (const call of result.tool_calls ?? []) this.settleTool(this.toolCall(call, 0), call);
    }
    this.checkResults.clear();
    this.checkList.replaceChildren();
    for (const check of result.checks ?? []) this.check(check);
    this.results.replaceChildren(...measurementsTable(result.measurements ?? []),
      ...findingsList(result.findings ?? []));
    const usage = result.usage ?? {};
    const total = result.timings_ms?.total;
    const calls = (result.tool_calls ?? []).length;
    const revisions = result.revisions ?? 0;
    this.meta.textContent = [
      result.model,
      `${calls} tool call${calls === 1 ? "" : "s"}`,
      `${revisions} revision${revisions === 1 ? "" : "s"}`,
      usage.llm_calls ? `${usage.llm_calls} model calls, ${formatNumber(usage.input_tokens, 0)} in / `
        + `${formatNumber(usage.output_tokens, 0)} out tokens` : null,
      typeof total === "number" && total > 0 ? formatDuration(total) : null,
    ].filter(Boolean).join(" · ");
    this.end("done");
  }

  fail(error) {
    this.finished = true;
    this.render();
    fill(this.errorBox,
      h("strong", {}, error.message || "The turn failed."),
      error.code ? h("code", { class: "error-code" }, error.code) : null,
      error.hint ? h("p", { class: "hint" }, error.hint) : null);
    this.errorBox.hidden = false;
    this.end("error");
  }

  stopped() {
    this.finished = true;
    this.render();
    this.note("stopped", "Stopped: closing the stream cancelled the turn on the server.");
    this.end("stopped");
  }

  end(state) {
    this.setStatus("");
    for (const tool of this.tools.values()) {
      if (tool.row.dataset.state === "running") {
        tool.row.dataset.state = "unknown";
        tool.progress.remove();
        tool.outcome.textContent = "no result";
      }
    }
    this.root.dataset.state = state;
    this.updated();
  }
}

function measurementsTable(measurements) {
  if (!measurements.length) return [];
  const passed = (m) => {
    if (m.passed === true) return h("span", { class: "ok" }, "✓ pass");
    if (m.passed === false) return h("span", { class: "bad" }, "✗ fail");
    return h("span", { class: "muted" }, "—");
  };
  const rows = measurements.map((m) => h("tr", {},
    h("th", { scope: "row" }, h("code", {}, m.name)),
    h("td", { class: "num" }, formatNumber(m.value)),
    h("td", {}, m.unit ?? ""),
    h("td", { class: "target", title: m.target ?? "" }, m.target || "—"),
    h("td", {}, m.budget || "—"),
    h("td", {}, passed(m))));
  return [h("section", { class: "measurements", "aria-label": "Measurements" },
    h("h3", { class: "section-label" }, "Measurements"),
    h("div", { class: "table-wrap" }, h("table", { class: "measurements-table" },
      h("thead", {}, h("tr", {}, ["Name", "Value", "Unit", "Target", "Budget", "Passed"]
        .map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows))))];
}

function findingsList(findings) {
  if (!findings.length) return [];
  return [h("section", { class: "findings", "aria-label": "Findings" },
    h("h3", { class: "section-label" }, "Findings"),
    h("ul", { class: "finding-list" }, findings.map((f) => h("li", { class: "finding" },
      h("span", { class: `severity ${f.severity ?? "medium"}` }, f.severity ?? "medium"),
      h("code", { class: "finding-kind" }, f.kind),
      f.location ? h("span", { class: "muted small" }, ` at ${f.location}`) : null,
      h("div", { class: "finding-summary" }, f.summary),
      f.evidence ? h("details", {}, h("summary", {}, "Evidence"), h("pre", {}, f.evidence)) : null))))];
}

// ------------------------------------------------------------------ the page

function startPage() {
  const $ = (id) => document.getElementById(id);
  const els = {
    sidebar: $("sidebar"), menu: $("menu-button"), newThread: $("new-thread"),
    threadList: $("thread-list"), threadsEmpty: $("threads-empty"), settings: $("settings"),
    settingsForm: $("settings-form"), apiKey: $("api-key"), model: $("model"),
    saved: $("settings-saved"), title: $("thread-title"), banner: $("banner"),
    conversation: $("conversation"), welcome: $("welcome"), composer: $("composer"),
    message: $("message"), send: $("send"), announcer: $("announcer"), runStatus: $("run-status"),
  };
  const state = { threadId: null, running: null, threads: [], loadToken: 0 };

  els.apiKey.value = localStorage.getItem(KEY_STORAGE) ?? "";
  els.model.value = localStorage.getItem(MODEL_STORAGE) ?? "";

  const announce = (text) => { els.announcer.textContent = text; };

  /** The sidebar is a drawer on small screens; on wide ones "open" changes nothing. */
  function setSidebar(open) {
    els.sidebar.classList.toggle("open", open);
    els.menu.setAttribute("aria-expanded", String(open));
  }

  function showBanner(kind, message, hint = "") {
    els.banner.className = `banner ${kind}`;
    fill(els.banner, h("strong", {}, message), hint ? h("span", {}, ` ${hint}`) : null);
    els.banner.hidden = false;
  }
  const hideBanner = () => { els.banner.hidden = true; };

  /** What the page does about an API error besides showing it where it happened. */
  function reactTo(error) {
    if (error.status === 401) {
      showBanner("warn", "The server needs a valid API key.",
        "Enter it under Connection settings and press Save.");
      els.settings.open = true;
      setSidebar(true);
      els.apiKey.focus();
    } else if (error.status === 429) {
      showBanner("warn", "The server is busy right now.", "Try again in a few seconds.");
    }
  }

  // ---- scrolling: follow the answer unless the reader scrolled up
  let follow = true;
  els.conversation.addEventListener("scroll", () => {
    const c = els.conversation;
    follow = c.scrollHeight - c.scrollTop - c.clientHeight < 80;
  });
  els.conversation.addEventListener("turn-updated", () => {
    if (follow) els.conversation.scrollTop = els.conversation.scrollHeight;
  });

  // ---- threads
  function renderThreads() {
    els.threadList.replaceChildren(...state.threads.map((t) => {
      const current = t.thread_id === state.threadId;
      return h("li", {}, h("button", {
        type: "button", class: "thread-item", dataset: { threadId: t.thread_id },
        "aria-current": current ? "true" : null,
        onclick: () => {
          const hash = `#thread=${encodeURIComponent(t.thread_id)}`;
          if (location.hash === hash) openThread(t.thread_id); // same address: no hashchange
          else location.hash = hash;
        },
      },
      h("span", { class: "thread-item-title" }, t.title || "Untitled thread"),
      h("span", { class: "thread-item-meta muted small" },
        `${relativeTime(t.updated_at)} · ${t.turns} turn${t.turns === 1 ? "" : "s"}`)));
    }));
    els.threadsEmpty.hidden = state.threads.length > 0;
    const current = state.threads.find((t) => t.thread_id === state.threadId);
    if (current) els.title.textContent = current.title || "Untitled thread";
  }

  async function loadThreads() {
    try {
      const body = await (await api("v1/threads")).json();
      state.threads = body.threads ?? [];
      renderThreads();
    } catch (error) {
      if (error.status === 401 || error.status === 429) reactTo(error);
      else showBanner("error", `Could not load the threads: ${error.message}`, error.hint ?? "");
    }
  }

  function showWelcome() {
    els.conversation.replaceChildren(els.welcome);
    els.welcome.hidden = false;
  }

  async function openThread(threadId) {
    const token = ++state.loadToken;
    state.threadId = threadId;
    renderThreads();
    setSidebar(false);
    els.conversation.replaceChildren(h("p", { class: "muted loading" }, "Loading the thread…"));
    try {
      const body = await (await api(threadPath(threadId))).json();
      if (token !== state.loadToken) return; // another thread was opened meanwhile
      els.title.textContent = body.thread?.title || "Untitled thread";
      const views = (body.turns ?? []).map((turn) => {
        const view = new TurnView(turn.message);
        view.final(turn.result);
        return view.root;
      });
      if (!views.length) {
        // No recorded TurnResults (an older thread): show the bare messages.
        for (const m of body.messages ?? []) {
          views.push(h("div", { class: `msg ${m.role === "user" ? "user" : "assistant"}` },
            m.role === "user" ? h("div", { class: "bubble" }, m.content)
              : h("div", { class: "card" }, Object.assign(h("div", { class: "answer md" }),
                { innerHTML: renderMarkdown(m.content) }))));
        }
      }
      els.conversation.replaceChildren(...(views.length ? views : [els.welcome]));
      // Start at the latest question, not in the middle of its answer.
      views.at(-1)?.scrollIntoView({ block: "start" });
      announce(`Opened thread ${els.title.textContent}`);
    } catch (error) {
      if (token !== state.loadToken) return;
      els.conversation.replaceChildren(h("div", { class: "error-box", role: "alert" },
        h("strong", {}, error.message), error.hint ? h("p", { class: "hint" }, error.hint) : null));
      reactTo(error);
    }
  }

  function newThread() {
    state.loadToken += 1;
    state.threadId = null;
    els.title.textContent = "New thread";
    if (location.hash) history.pushState(null, "", location.pathname + location.search);
    renderThreads();
    showWelcome();
    setSidebar(false);
    els.message.focus();
  }

  function route() {
    const match = /^#thread=(.+)$/.exec(location.hash);
    const id = match ? decodeURIComponent(match[1]) : null;
    if (id) openThread(id);
    else if (state.threadId) newThread();
  }

  // ---- running a turn
  function setRunning(controller) {
    state.running = controller;
    els.send.textContent = controller ? "Stop" : "Send";
    els.send.classList.toggle("stop", Boolean(controller));
    els.send.setAttribute("aria-label", controller ? "Stop the answer" : "Send the message");
    els.runStatus.classList.toggle("active", Boolean(controller));
  }

  async function send(message) {
    hideBanner();
    els.welcome.hidden = true;
    if (els.welcome.parentNode === els.conversation) els.welcome.remove();
    const view = new TurnView(message);
    els.conversation.append(view.root);
    els.conversation.scrollTop = els.conversation.scrollHeight;
    follow = true;
    const controller = new AbortController();
    setRunning(controller);
    let streaming = false;
    try {
      if (!state.threadId) {
        const created = await api("v1/threads", { method: "POST", body: {}, signal: controller.signal });
        const info = await created.json();
        state.threadId = info.thread_id;
        // Record the thread in the address without reloading it (it is on screen already).
        history.replaceState(null, "", `#thread=${encodeURIComponent(info.thread_id)}`);
      }
      const model = localStorage.getItem(MODEL_STORAGE) || null;
      const response = await api(`${threadPath(state.threadId)}/runs/stream`, {
        method: "POST", body: { message, model }, signal: controller.signal, accept: "text/event-stream",
      });
      streaming = true;
      announce("Working on the answer");
      for await (const event of readEventStream(response.body)) {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          continue; // not a run event (a proxy's keep-alive, say)
        }
        view.handle(event.type, data ?? {});
        if (event.type === "run_start" || event.type === "final") loadThreads();
      }
      if (!view.finished) {
        view.fail({ code: "stream_cut", message: "The connection closed before the answer was complete.",
          hint: "The server may have restarted; reopen the thread to see whether the turn finished." });
      }
      announce(view.root.dataset.state === "done" ? "Answer ready" : "The turn failed");
    } catch (error) {
      if (error.name === "AbortError") {
        view.stopped();
      } else {
        view.fail(error instanceof ApiError ? error
          : { code: "page_error", message: String(error.message ?? error), hint: "" });
        if (!streaming && !els.message.value) els.message.value = message; // ready to resend
        reactTo(error);
        announce(`Error: ${error.message}`);
      }
    } finally {
      setRunning(null);
      loadThreads();
    }
  }

  // ---- wiring
  els.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.running) {
      state.running.abort();
      return;
    }
    const message = els.message.value.trim();
    if (!message) return;
    els.message.value = "";
    autosize();
    send(message);
  });

  els.message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!state.running) els.composer.requestSubmit();
    }
  });

  function autosize() {
    els.message.style.height = "auto";
    els.message.style.height = `${Math.min(els.message.scrollHeight, 240)}px`;
  }
  els.message.addEventListener("input", autosize);

  for (const example of document.querySelectorAll(".example")) {
    example.addEventListener("click", () => {
      els.message.value = example.textContent.replace(/\s+/g, " ").trim();
      autosize();
      els.message.focus();
    });
  }

  els.newThread.addEventListener("click", newThread);

  els.menu.addEventListener("click", (event) => {
    event.stopPropagation();
    setSidebar(!els.sidebar.classList.contains("open"));
  });
  document.querySelector(".main").addEventListener("click", () => setSidebar(false));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && els.sidebar.classList.contains("open")) {
      setSidebar(false);
      els.menu.focus();
    }
  });

  els.settingsForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = els.apiKey.value.trim();
    const model = els.model.value.trim();
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
    if (model) localStorage.setItem(MODEL_STORAGE, model);
    else localStorage.removeItem(MODEL_STORAGE);
    els.saved.textContent = "Saved.";
    setTimeout(() => { els.saved.textContent = ""; }, 2000);
    hideBanner();
    loadThreads();
  });

  window.addEventListener("hashchange", route);
  loadThreads();
  route();
  els.message.focus();
}

if (document.getElementById("composer")) startPage();
