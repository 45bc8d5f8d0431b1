"""A cap on the size of API request bodies, enforced while the body arrives.

Uvicorn and Starlette read a body of any size into memory, and FastAPI parses it as JSON
before any of our checks run: one client could make the server hold and parse gigabytes.
`BodyLimit` answers 413 (OpenAI error shape) as soon as the body is known to be too large:
at once when `Content-Length` says so, otherwise as soon as the bytes received pass the cap
(chunked transfer, or a client that lies about the length). It never buffers anything.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import RequestTooLarge
from core.web import declared_length, error_response


class BodyTooLarge(HTTPException):
    """Raised from `receive` once the body passes the cap.

    An HTTPException, so FastAPI's body reader lets it through unchanged (it turns other
    exceptions into a 400) and the API's route class answers it as a 413.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _message(max_bytes))


def _message(max_bytes: int) -> str:
    return (
        f"The request body is over the limit of {max_bytes:,} bytes "
        "(TENANTLLM_API_MAX_BODY_BYTES); send a shorter conversation."
    )


class BodyLimit:
    """ASGI middleware: requests whose path starts with `prefix` send at most `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int, prefix: str = "/v1/") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with a `receive` that refuses bytes past the cap."""
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watching_send)
        except BodyTooLarge:
            if started:  # too late for a status line; the connection just ends
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(RequestTooLarge(_message(self.max_bytes)))
        response.headers["Connection"] = "close"  # the rest of the body is never read
        await response(scope, receive, send)
