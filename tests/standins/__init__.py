"""Local stand-ins for remote model APIs.

There is no network and no API key in tests, so providers are exercised
through their real client code (the ``anthropic`` SDK, ``httpx``) against
small HTTP servers on 127.0.0.1 that speak just enough of each wire protocol.
Each server plays a *script*: a queue of planned replies and failures. It
records every request it receives so tests can assert what the provider sent.
"""

from .anthropic_api import AnthropicStandIn
from .openai_api import OpenAIStandIn
from .script import Fail, Hangup, RecordedRequest, Reply, ToolCall

__all__ = [
    "AnthropicStandIn",
    "Fail",
    "Hangup",
    "OpenAIStandIn",
    "RecordedRequest",
    "Reply",
    "ToolCall",
]
