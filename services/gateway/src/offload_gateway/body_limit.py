"""A size limit on the request bodies the gateway reads whole (JSON), as a pure ASGI middleware.

FastAPI reads a JSON body into memory before any dependency or route code
runs, so a route cannot refuse a huge body itself: a client could make the
gateway hold a gigabyte per request. This middleware answers 413 at once
when `Content-Length` is over the limit, and counts the bytes of a body sent
without one (chunked), refusing it as soon as it passes the limit. Uploads
(`/v1/files`) stream to disk under their own, larger limit and are left alone.
"""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from offload_gateway.problems import problem_response


class BodyLimit:
    """Refuse request bodies over `max_bytes` with a 413 problem, except under `exempt`."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, exempt: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    def _detail(self) -> str:
        return f"the request body is larger than the limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = problem_response(413, self._detail(), instance=scope["path"])
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route's body read, this becomes the route's answer
                    # (the gateway's HTTP error handler makes it a problem+json 413).
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, counted, send)
