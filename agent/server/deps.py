"""What the HTTP routes share: the error type, the service, the thread check, the run slot.

Kept apart from :mod:`agent.server.app` so that the route modules (the
native API and the OpenAI-compatible one) depend on it, not on each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Request
from pydantic import BaseModel, Field

from agent.run import TurnError
from agent.server.guards import viewer_of
from agent.service import AgentService, RunsBusy, RunSlot, ThreadBusy
from agent.threads import Viewer

T = TypeVar("T")


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable")
    message: str
    hint: str = Field("", description="what to do next")
    fields: list[FieldProblem] | None = Field(None, description="the invalid fields (422 only)")


class ErrorResponse(BaseModel):
    """The one shape of every error this server answers."""

    error: ErrorDetail


_STATUS_MEANING = {
    400: "the request cannot be served as asked",
    409: "a turn is already running on this thread",
    401: "a valid API key is required",
    403: "a web page of another origin may not change anything here (PERFAGENT_CORS_ORIGINS "
         "lists the origins that may)",
    404: "no such thread (or not one of this API key's) or model",
    413: "the request body is too large",
    421: "the Host header does not name this server (see --allowed-host)",
    422: "the request is malformed; the named fields say why",
    429: "too many turns are running; retry after the Retry-After seconds",
    500: "the server failed; the thread's earlier turns are intact",
    502: "the language model failed",
    503: "the database is unreachable; retry after the Retry-After seconds",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for these error statuses, all in the shared shape.

    Errors are JSON even on a streaming route, whose responses FastAPI would
    otherwise document in the stream's media type only."""
    json_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    return {status: {"model": ErrorResponse, "description": _STATUS_MEANING[status],
                     "content": json_body} for status in statuses}

#: Turn errors that are the caller's doing answer 4xx; the rest say the server failed.
_ERROR_STATUS = {"unknown_model": 400, "model_error": 502, "missing_api_key": 400,
                 "thread_not_found": 404}
#: Seconds a client told "busy" should wait before retrying.
RETRY_AFTER_S = 2

ThreadId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                               description="a thread id from POST /v1/threads")]


class ApiError(Exception):
    """An HTTP error with a stable code and a hint, rendered in the shared error shape."""

    def __init__(self, status: int, code: str, message: str, hint: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.hint = status, code, message, hint
        self.headers = headers or {}


def _service(request: Request) -> AgentService:
    return request.app.state.service


Service = Annotated[AgentService, Depends(_service)]


def _viewer(request: Request) -> Viewer:
    return viewer_of(request.scope)


#: Whose threads the request sees and continues: with API keys, the key's own.
CurrentViewer = Annotated[Viewer, Depends(_viewer)]


def thread_not_found(thread_id: str, hint: str = "") -> ApiError:
    """The one answer for a thread that does not exist and for someone else's."""
    return ApiError(404, "thread_not_found", f"there is no thread {thread_id!r}",
                    hint or "create one with POST /v1/threads, or list yours with GET /v1/threads")


def _existing_thread(thread_id: ThreadId, service: Service, viewer: CurrentViewer) -> str:
    if service.thread(thread_id, viewer) is None:
        raise thread_not_found(thread_id)
    return thread_id


ExistingThread = Annotated[str, Depends(_existing_thread)]


def claim_thread(lease: RunLease, thread_id: str) -> None:
    """Bind the lease's slot to the thread, or answer 409 while another turn runs on it."""
    try:
        lease.slot.bind(thread_id)
    except ThreadBusy as exc:
        raise ApiError(409, "thread_busy", str(exc), exc.hint) from None


class RunLease:
    """A run slot held for a whole request, and the turn streams it started.

    When the request ends, however it ends, each stream is closed and the slot
    released. Closing matters: a client that hangs up mid-stream leaves the
    turn's generator suspended, and only closing it stops the graph and kills
    the tool processes it started.
    """

    def __init__(self, slot: RunSlot) -> None:
        self.slot = slot
        self._streams: list[AsyncGenerator[Any, None]] = []

    def track(self, stream: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        self._streams.append(stream)
        return stream

    async def end(self) -> None:
        try:
            for stream in self._streams:
                await stream.aclose()
        finally:
            self.slot.release()


async def _run_lease(service: Service) -> AsyncIterator[RunLease]:
    """The lease for one request, or the 429 that tells the client to come back.
    Its slot is released even when the request then fails validation."""
    try:
        # Off the event loop: with PostgreSQL, taking a slot is a few queries.
        lease = RunLease(await asyncio.to_thread(service.reserve))
    except RunsBusy as exc:
        raise ApiError(429, "too_many_runs", str(exc),
                       f"retry after {RETRY_AFTER_S} s, or raise PERFAGENT_MAX_RUNS on the server",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    try:
        yield lease
    finally:
        await lease.end()


Lease = Annotated[RunLease, Depends(_run_lease)]


def turn_error(error: TurnError) -> ApiError:
    return ApiError(_ERROR_STATUS.get(error.code, 500), error.code, error.message, error.hint)




def _claimed_thread(thread_id: ExistingThread, lease: Lease) -> str:
    claim_thread(lease, thread_id)
    return thread_id


#: An existing thread claimed for this request's turn (404, 409 or 429 before any
#: streaming starts: a dependency runs before the response does).
ClaimedThread = Annotated[str, Depends(_claimed_thread)]
