"""uvicorn's HTTP/1.1 connections with a deadline for the request's head.

uvicorn times out idle keep-alive connections, but not one that sends its request line and headers
slowly or never finishes them: such connections stay open for ever, and a few hundred of them use up
the process's file descriptors (1,024 in the container). This protocol closes a connection whose
next request head has not fully arrived `seconds` after the connection opened or its previous
response ended (docs/decisions.md #40).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


def header_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol class, closing connections that take over `seconds` to send a request head."""
    return type("HeaderTimeoutH11Protocol", (_HeaderTimeout,), {"header_timeout": seconds})


class _HeaderTimeout(H11Protocol):
    header_timeout: float

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._waiting_after = self.cycle  # a request whose head has arrived replaces the cycle
        self._head_deadline = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        deadline = getattr(self, "_head_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.cycle is self._waiting_after and not self.transport.is_closing():
            self.transport.close()
