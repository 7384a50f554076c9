"""Serving surfaces: the HTTP API and web page, the OpenAI-compatible endpoint, MCP and ACP.

Each surface is thin: it translates its protocol to and from
:class:`agent.service.AgentService`, which runs turns through the core run
API (:mod:`agent.run`).
"""
