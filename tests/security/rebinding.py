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

#: A loopback address nothing listens on: a client that resolves again and connects
#: there is refused at once, and the test never sends a packet off this machine.
ELSEWHERE = "127.0.0.2"
#: Not a loopback address, so every target check refuses it; yet Linux delivers a
#: connection to it locally, so a check that fails to refuse it still sends nothing
#: off this machine.
NOT_LOOPBACK = "0.0.0.0"


def rebinding(monkeypatch: pytest.MonkeyPatch, name: str, first: str = "127.0.0.1",
              later: str = ELSEWHERE) -> list[str]:
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
