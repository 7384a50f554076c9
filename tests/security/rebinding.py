"""A resolver that answers differently the second time: what DNS rebinding looks like.

``rebinding(monkeypatch, name, first, later)`` makes ``socket.getaddrinfo``
resolve ``name`` to ``first`` once and to ``later`` on every call after that,
in this process only. A client that resolves the name again after the target
check connects to ``later``; one that connects to the checked address never
sees it. Other names resolve as usual.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

#: TEST-NET-1 (RFC 5737): never routed, so a connection there fails or times out.
UNREACHABLE = "192.0.2.1"


def rebinding(monkeypatch: pytest.MonkeyPatch, name: str, first: str = "127.0.0.1",
              later: str = UNREACHABLE) -> list[str]:
    """Patch the resolver; returns the list of answers given (one per lookup of ``name``)."""
    real = socket.getaddrinfo
    answers: list[str] = []

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, bytes):
            host = host.decode()
        if host != name:
            return real(host, port, *args, **kwargs)
        address = first if not answers else later
        answers.append(address)
        return real(address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return answers
