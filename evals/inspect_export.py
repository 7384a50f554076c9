"""Export a run log to the inspect_ai eval log format (JSON, log format version 2).

The file opens in ``inspect view`` and loads with ``inspect_ai.log.read_eval_log``,
so runs of this agent sit beside other inspect evaluations. inspect_ai itself is
not needed to write it (it is an optional extra, ``perfagent[inspect]``, used by
the tests to validate the output).

Mapping: the whole run is one eval (one inspect "task" over every suite); each
case-epoch is a sample with id ``suite/case_id`` and its epoch; the thread's recorded
messages become the sample's chat messages (user turns, the agent's tool calls, the
tools' results, its answers); the perfagent verdict is the sample's ``perfagent`` score (``C``
correct, ``I`` incorrect, ``N`` when every scorer skipped), with each scorer's result
in the score's metadata; an errored case-epoch carries the error and no score.
"""

from __future__ import annotations

import json
import math
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.results import Usage
from evals.model import LOG_FORMAT, LOG_VERSION, CaseRun, RunLog
from evals.report import (
    ReportError,
    epoch_reason,
    epoch_status,
    message_text,
    one_line,
    run_error,
    write_text_atomic,
)

#: The inspect_ai eval log format version written here.
INSPECT_LOG_VERSION = 2
SCORE_NAME = "perfagent"
_VERDICT = {"pass": "C", "fail": "I", "skipped": "N"}


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _usage(usages: list[Usage]) -> dict[str, int]:
    """Token counts in inspect's ModelUsage shape."""
    given = sum(u.input_tokens for u in usages)
    produced = sum(u.output_tokens for u in usages)
    return {"input_tokens": given, "output_tokens": produced, "total_tokens": given + produced,
            "input_tokens_cache_read": sum(u.cache_read_tokens for u in usages)}


def _message(record: dict[str, Any], model: str) -> dict[str, Any]:
    """A recorded thread message (:attr:`CaseRun.messages`) as an inspect ChatMessage."""
    role = record.get("role")
    text = message_text(record)
    if role == "assistant":
        message: dict[str, Any] = {"role": "assistant", "content": text, "model": model, "source": "generate"}
        if record.get("tool_calls"):
            message["tool_calls"] = [
                {"id": call.get("id") or f"call-{i}", "function": call.get("name", ""),
                 "arguments": call.get("args") or {}, "type": "function"}
                for i, call in enumerate(record["tool_calls"], 1)]
        return message
    if role == "tool":
        message = {"role": "tool", "content": text, "tool_call_id": record.get("tool_call_id"),
                   "function": record.get("name")}
        if record.get("status") == "error":
            message["error"] = {"type": "unknown", "message": one_line(text, 500)}
        return message
    if role == "system":
        return {"role": "system", "content": text}
    # The user's turns, and the checks' revision feedback (sent to the model as a user message).
    return {"role": "user", "content": text, "source": "input"}


def _sample(run: CaseRun, model: str) -> dict[str, Any]:
    """One case-epoch as an inspect EvalSample."""
    status = epoch_status(run)
    final = run.final
    inputs = [t.input for t in run.turns]
    # A run that failed before its thread was read back has no messages: its questions stand in.
    messages = ([_message(m, model) for m in run.messages] if run.messages
                else [{"role": "user", "content": i, "source": "input"} for i in inputs])
    answer = final.answer if final is not None else ""
    usages = [t.result.usage for t in run.turns if t.result is not None]
    started = run.started_at or None
    sample: dict[str, Any] = {
        "id": f"{run.suite}/{run.case_id}",
        "epoch": run.epoch,
        # One turn is a plain string; several are the user messages sent in order.
        "input": inputs[0] if len(inputs) == 1 else [{"role": "user", "content": i} for i in inputs],
        "target": "",
        "messages": messages,
        "output": {
            "model": model,
            "choices": [{"message": {"role": "assistant", "content": answer, "model": model,
                                     "source": "generate"}, "stop_reason": "stop"}] if final else [],
            "completion": answer,
            "usage": _usage(usages) if usages else None,
            "time": run.duration_ms / 1000,
        },
        "metadata": {
            "suite": run.suite, "case_id": run.case_id, "tags": run.tags, "status": status,
            "thread_id": run.thread_id, "attempts": run.attempts, "cached": run.cached,
            "checks": [c.model_dump() for c in final.checks] if final else [],
            "measurements": [m.model_dump() for m in final.measurements] if final else [],
            "findings": [f.model_dump() for f in final.findings] if final else [],
            "delegations": [d.model_dump() for d in final.delegations] if final else [],
        },
        "model_usage": {model: _usage(usages)} if usages else {},
        "total_time": run.duration_ms / 1000,
        "working_time": run.duration_ms / 1000,
        "started_at": _iso(started) if started else None,
        "completed_at": _iso(started + run.duration_ms / 1000) if started else None,
    }
    if status == "error":
        err = run_error(run)
        text = f"{err.code}: {err.message}" + (f" ({err.hint})" if err.hint else "")
        sample["error"] = {"message": text, "traceback": "", "traceback_ansi": ""}
        sample["scores"] = None
    else:
        sample["scores"] = {SCORE_NAME: {
            "value": _VERDICT[status],
            "answer": answer,
            "explanation": epoch_reason(run) or "every scorer that ran passed",
            "metadata": {"scorers": [s.model_dump() for s in run.scores]},
        }}
    return sample


def inspect_log(log: RunLog) -> dict[str, Any]:
    """The run as an inspect_ai EvalLog (a JSON-ready dict)."""
    cfg = log.config
    names = [s.name for s in log.suites]
    samples = [_sample(run, cfg.model) for run in log.runs]
    verdicts = [1.0 if epoch_status(r) == "pass" else 0.0 for r in log.runs
                if epoch_status(r) in ("pass", "fail")]
    accuracy = statistics.fmean(verdicts) if verdicts else 0.0
    stderr = statistics.stdev(verdicts) / math.sqrt(len(verdicts)) if len(verdicts) > 1 else 0.0
    usages = [t.result.usage for r in log.runs for t in r.turns if t.result is not None]
    case_count = sum(len(s.cases) for s in log.suites)
    return {
        "version": INSPECT_LOG_VERSION,
        "status": "success",
        "eval": {
            "run_id": log.run_id,
            "eval_id": log.run_id,
            "created": _iso(log.created_at),
            "task": "perfagent_eval",
            "task_id": log.run_id,
            "task_display_name": "perfagent eval: " + ", ".join(names),
            "tags": sorted({t for r in log.runs for t in r.tags}),
            "solver": "perfagent",
            "solver_args": {"persona": cfg.persona},
            "dataset": {"name": ", ".join(names), "location": ", ".join(s.path for s in log.suites if s.path),
                        "samples": case_count,
                        "sample_ids": [f"{s.name}/{c.id}" for s in log.suites for c in s.cases]},
            "model": cfg.model,
            "config": {"epochs": cfg.epochs, "epochs_reducer": ["mean"], "max_samples": cfg.concurrency,
                       "retry_on_error": cfg.retries,
                       "time_limit": math.ceil(cfg.timeout) if cfg.timeout else None},
            "packages": {"perfagent": log.perfagent_version} if log.perfagent_version else {},
            "metadata": {"source_format": LOG_FORMAT, "source_version": LOG_VERSION, "seed": cfg.seed,
                         "persona": cfg.persona, "grader_model": cfg.grader_model, "git_rev": log.git_rev,
                         "suites": [s.model_dump(include={"name", "path", "sha256"}) for s in log.suites]},
        },
        "plan": {"name": "plan", "steps": [{"solver": "perfagent", "params": {"persona": cfg.persona}}],
                 "config": {}},
        "results": {
            "total_samples": len(samples),
            "completed_samples": sum(r.status == "ok" for r in log.runs),
            "scores": [{
                "name": SCORE_NAME, "scorer": SCORE_NAME, "reducer": "mean",
                "scored_samples": len(verdicts), "unscored_samples": len(samples) - len(verdicts),
                "metrics": {"accuracy": {"name": "accuracy", "value": accuracy},
                            "stderr": {"name": "stderr", "value": stderr}},
            }],
        },
        "stats": {
            "started_at": _iso(log.created_at),
            "completed_at": _iso(log.created_at + log.duration_ms / 1000),
            "model_usage": {cfg.model: _usage(usages)} if usages else {},
        },
        "samples": samples,
    }


def export_inspect(log: RunLog, path: Path) -> Path:
    """Write ``log`` as an inspect_ai eval log JSON file at ``path`` (use a ``.json`` name:
    inspect picks the reader by extension)."""
    path = Path(path)
    if path.suffix != ".json":
        raise ReportError("export_not_json", f"{path}: an inspect JSON log needs a .json name",
                          "inspect_ai picks its reader by extension (.eval is a zip format); "
                          f"use {path.with_suffix('.json').name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(inspect_log(log), indent=2, ensure_ascii=False))
    except OSError as exc:
        raise ReportError("export_write_failed", f"cannot write {path}: {exc}",
                          "check that the folder is writable and the disk is not full") from None
    return path
