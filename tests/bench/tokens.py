"""Benchmark: model calls and tokens per turn on the Anthropic path, with prompt caching.

Drives the real graph through the real ``anthropic`` SDK against the local
Messages API stand-in (which counts tokens and honours ``cache_control`` the
way the API does), for a two-turn thread where each turn makes one tool call
and one answer. Prints each turn's calls and tokens and the share of the
second turn's input read from cache. Figures from one run; nothing passes or
fails.

Run: ``python tests/bench/tokens.py``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


async def main() -> None:
    from agent.bench import PASSING_DRAFT
    from agent.context import Settings
    from agent.run import run_turn
    from tests.standins import AnthropicStandIn, Reply, ToolCall

    os.environ["ANTHROPIC_API_KEY"] = "sk-bench"
    script = [Reply(tool_calls=[ToolCall("knowledge_search", {"query": "n+1"}, id="t1")]),
              Reply(text=PASSING_DRAFT),
              Reply(tool_calls=[ToolCall("knowledge_search", {"query": "index"}, id="t2")]),
              Reply(text=PASSING_DRAFT)]
    with tempfile.TemporaryDirectory() as tmp, \
            AnthropicStandIn(script=script, caching=True) as api:
        os.environ["ANTHROPIC_BASE_URL"] = api.base_url
        settings = Settings(model="anthropic:claude-sonnet-5", state_dir=Path(tmp))
        first = await run_turn("why are my queries slow?", settings=settings)
        second = await run_turn("and the orders page?", settings=settings,
                                thread_id=first.thread_id)
    print(f"{'turn':>5} {'calls':>6} {'input':>8} {'output':>7} {'cache read':>11} "
          f"{'cache write':>12}")
    for number, result in enumerate((first, second), 1):
        u = result.usage
        print(f"{number:>5} {u.llm_calls:>6} {u.input_tokens:>8} {u.output_tokens:>7} "
              f"{u.cache_read_tokens:>11} {u.cache_write_tokens:>12}")
    share = second.usage.cache_read_tokens / max(second.usage.input_tokens, 1)
    print(f"\nturn 2 reads {share:.0%} of its input tokens from the prompt cache; "
          f"checks made no model call (calls per turn = tool round + answer)")


if __name__ == "__main__":
    asyncio.run(main())
