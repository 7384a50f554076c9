"""The graph as a LangGraph server runs it (``langgraph dev``, LangGraph Studio).

``langgraph.json`` points here. The server brings its own checkpointer and
passes a :class:`agent.graph.ServerContext` (model and persona) per run; the
rest of the run context is built from the environment, as for the CLI.
"""

from agent.graph import ServerContext, build_graph

graph = build_graph(context_schema=ServerContext)
